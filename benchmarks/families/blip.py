"""BLIP benchmark: captioning and VQA bundles (retrieval bundles are refused up front: their
ITM/ITC measurements are not built yet).

Latency: the vision encoder, and a whole caption (or answer) of a fixed length (``CAPTION_TOKENS``
/ ``ANSWER_TOKENS`` tokens, no early stop, so every row does the same work). Accuracy against the
FP32 PyTorch model: the generated texts' exact-match and prefix agreement, and teacher-forced
next-token agreement and KL along a fixed caption (answer), overall and at the positions where the
FP32 top-1 margin is clear (random weights leave most logits near-tied: the margin is printed
beside every agreement figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevfm.quantize.calibration import skimage_photos
from edgevfm.runtime.generate import shared_prefix
from edgevfm.runtime.image import preprocess

from . import BENCH

CAPTION_TOKENS, ANSWER_TOKENS = 20, 8
REFERENCE_CAPTION = "a photo of a cat sitting on a couch next to a cup of coffee"
QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?")
REFERENCE_ANSWER = "a cat sitting on a couch"
CLEAR_MARGIN = 0.1  # FP32 top-1 minus top-2 probability at which a position counts as clear
GOAL_SPEEDUP, GOAL_AGREEMENT = 2.0, 0.90


@BENCH.register("blip")
class BlipBench:
    demo_runs = 5
    max_runs = {"caption": 5, "answer": 5}

    @staticmethod
    def demo(bundles: list[Path], report_dir: Path, threads: int) -> None:
        """Prints each bundle's caption of scikit-image's cat."""
        import skimage.data

        from edgevfm.runtime import load

        for path in bundles:
            pipeline = load(path, threads=threads)
            if pipeline.manifest.get("task") == "vqa":
                said = f"Q: {QUESTIONS[0]} A: {pipeline.answer(skimage.data.chelsea(), QUESTIONS[0])}"
            else:
                said = pipeline.caption(skimage.data.chelsea())
            print(f"      {path.name:>13}: {said}")

    def __init__(self, data: str | None = None):
        self.images = skimage_photos()[:3]

    def torch_runner(self, checkpoint):
        from edgevfm.export.families.blip import task_of

        self.task = task_of(checkpoint.model)
        return (_TorchBlipVqa if self.task == "vqa" else _TorchBlip)(checkpoint)

    @staticmethod
    def check_bundles(bundles) -> None:
        """Refuse, before measuring anything, bundles this benchmark cannot measure yet."""
        from edgevfm.runtime.errors import InputError

        for bundle in bundles:
            if bundle.manifest.get("task") not in ("caption", "vqa"):
                raise InputError(f"the BLIP benchmark measures captioning and VQA bundles so far; {bundle.path} is a "
                                 f"{bundle.manifest.get('task')} bundle")

    def bundle_runner(self, pipeline):
        return (_BundleBlipVqa if pipeline.manifest["task"] == "vqa" else _BundleBlip)(pipeline)

    def calls(self, runner, batch: int):
        return runner.calls(self.images[0])

    def outputs(self, runner) -> dict:
        """Each image's generated text (a caption, or the answer to one question) and the
        teacher-forced logits along the reference caption (answer)."""
        return {"texts": [runner.generated(image, i) for i, image in enumerate(self.images)],
                "logits": np.stack([runner.teacher_logits(image, i) for i, image in enumerate(self.images)])}

    def accuracy(self, ref: dict, out: dict) -> dict:
        from edgevfm.runtime.generate import softmax

        vocab = ref["logits"].shape[-1]
        p = softmax(ref["logits"].reshape(-1, vocab).astype(np.float64))
        q = softmax(out["logits"].reshape(-1, vocab).astype(np.float64))
        top2 = np.sort(p, axis=-1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        clear = margin >= CLEAR_MARGIN
        agree = p.argmax(-1) == q.argmax(-1)
        prefix = [shared_prefix(a, b) / max(1, len(a)) for a, b in zip(ref["texts"], out["texts"])]
        return {"next_token_top1_agreement": float(agree.mean()),
                "clear_margin_top1_agreement": float(agree[clear].mean()) if clear.any() else None,
                "clear_margin_positions": f"{int(clear.sum())} of {len(clear)}",
                "fp32_top1_margin": float(margin.mean()),
                "kl_divergence_mean": float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), -1))),
                "exact_match": float(np.mean([a == b for a, b in zip(ref["texts"], out["texts"])])),
                "prefix_agreement": float(np.mean(prefix))}

    def workload(self) -> dict:
        if getattr(self, "task", "caption") == "vqa":
            return {"images": len(self.images), "questions": list(QUESTIONS), "answer_tokens": ANSWER_TOKENS,
                    "teacher_forced_answer": REFERENCE_ANSWER, "clear_margin": CLEAR_MARGIN,
                    "note": "latency at batch 1: vision is one image; answer is the whole greedy answer of "
                            f"{ANSWER_TOKENS} tokens to one question (vision, question encoder, cross keys/values "
                            "and every decoder step); exact match: the answer's tokens equal FP32's"}
        return {"images": len(self.images), "caption_tokens": CAPTION_TOKENS,
                "teacher_forced_caption": REFERENCE_CAPTION, "clear_margin": CLEAR_MARGIN,
                "note": "latency at batch 1: vision is one image; caption is the whole greedy caption of "
                        f"{CAPTION_TOKENS} tokens (vision, cross keys/values and every decoder step); exact match: "
                        "the caption's tokens equal FP32's"}

    def goals(self, rows: list[dict], peaks: dict) -> list[dict]:
        torch_row = next(r for r in rows if r["kind"] == "pytorch")
        verdicts = []
        whole = "answer" if "answer" in torch_row["latency_ms"] else "caption"
        for row in rows:
            if row["kind"] != "bundle" or row["recipe"] is None:
                continue
            speedup = torch_row["latency_ms"][whole]["p50"] / row["latency_ms"][whole]["p50"]
            verdicts.append({"goal": f"{row['name']}: a whole {whole} at least {GOAL_SPEEDUP:.0f}x faster than PyTorch "
                                     "eager FP32", "met": bool(speedup >= GOAL_SPEEDUP),
                             "measured": f"{speedup:.2f}x ({row['latency_ms'][whole]['p50']:.1f} ms vs "
                                         f"{torch_row['latency_ms'][whole]['p50']:.1f} ms)"})
            acc = row["accuracy"]
            clear = acc["clear_margin_top1_agreement"]
            verdicts.append({"goal": f"{row['name']}: teacher-forced next-token agreement >= {GOAL_AGREEMENT:.0%} "
                                     f"where the FP32 top-1 margin is >= {CLEAR_MARGIN}",
                             "met": bool(clear is not None and clear >= GOAL_AGREEMENT),
                             "measured": (f"{clear:.0%}" if clear is not None else "no clear positions")
                                         + f" at {acc['clear_margin_positions']} positions; overall "
                                         f"{acc['next_token_top1_agreement']:.0%} (FP32 top-1 margin "
                                         f"{acc['fp32_top1_margin']:.3f})"})
        return verdicts



class _TorchBlip:
    """The FP32 PyTorch reference: transformers' processor and generate."""

    def __init__(self, checkpoint):
        import torch

        self.torch, self.model = torch, checkpoint.model
        self.processor, self.tokenizer = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"]
        self.config = checkpoint.model.config.text_config

    def pixels(self, image):
        from edgevfm.runtime.image import load_image

        return self.processor([np.asarray(load_image(image))], return_tensors="pt")["pixel_values"]

    def calls(self, image):
        torch, model, pixels = self.torch, self.model, self.pixels(image)

        def vision():
            with torch.inference_mode():
                return model.vision_model(pixel_values=pixels)

        def caption():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, max_new_tokens=CAPTION_TOKENS,
                                      min_new_tokens=CAPTION_TOKENS)

        return {"vision": vision, "caption": caption}, ("tokens", CAPTION_TOKENS, caption)

    def generated(self, image, index: int, **inputs) -> list[int]:
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=self.pixels(image), max_new_tokens=self.tokens,
                                      **inputs)[0, 1:].tolist()
        return out[:-1] if out and out[-1] == self.config.sep_token_id else out

    tokens = CAPTION_TOKENS

    def teacher_logits(self, image, index: int) -> np.ndarray:
        with self.torch.inference_mode():
            return self._decoder_logits(REFERENCE_CAPTION, self.model.vision_model(pixel_values=self.pixels(image))[0])

    def _decoder_logits(self, text: str, states, mask=None) -> np.ndarray:
        ids = [self.config.bos_token_id] + self.tokenizer(text, add_special_tokens=False).input_ids
        return self.model.text_decoder(input_ids=self.torch.tensor([ids]), encoder_hidden_states=states,
                                       encoder_attention_mask=mask).logits[0].float().numpy()


class _TorchBlipVqa(_TorchBlip):
    """The FP32 PyTorch reference for VQA: the question encoded against the image, the answer
    decoded against the question, as ``BlipForQuestionAnswering.generate``."""

    tokens = ANSWER_TOKENS

    def question(self, index: int) -> dict:
        found = self.tokenizer(QUESTIONS[index % len(QUESTIONS)], return_tensors="pt")
        return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

    def calls(self, image):
        torch, model, pixels = self.torch, self.model, self.pixels(image)
        question = self.question(0)

        def vision():
            with torch.inference_mode():
                return model.vision_model(pixel_values=pixels)

        def answer():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, **question, max_new_tokens=ANSWER_TOKENS,
                                      min_new_tokens=ANSWER_TOKENS)

        return {"vision": vision, "answer": answer}, ("tokens", ANSWER_TOKENS, answer)

    def generated(self, image, index: int, **inputs) -> list[int]:
        return super().generated(image, index, **self.question(index))

    def teacher_logits(self, image, index: int) -> np.ndarray:
        question = self.question(index)
        with self.torch.inference_mode():
            embeds = self.model.vision_model(pixel_values=self.pixels(image))[0]
            states = self.model.text_encoder(**question, encoder_hidden_states=embeds)[0]
            return self._decoder_logits(REFERENCE_ANSWER, states, question["attention_mask"])


class _BundleBlip:
    def __init__(self, pipeline):
        self.p = pipeline

    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": preprocess([image], p.manifest["preprocessing"])}

        def caption():
            return p.caption_tokens([image], max_new_tokens=CAPTION_TOKENS, stop_token_ids=())

        return {"vision": lambda: p.run("vision", pixels), "caption": caption}, ("tokens", CAPTION_TOKENS, caption)

    def generated(self, image, index: int) -> list[int]:
        return self.p.caption_tokens([image], max_new_tokens=CAPTION_TOKENS)[0]

    def teacher_logits(self, image, index: int) -> np.ndarray:
        return self._decoder_logits(REFERENCE_CAPTION, self.p.image_decoder([image]))

    def _decoder_logits(self, text: str, decoder) -> np.ndarray:
        ids = self.p.prompt_ids(text)
        _, logits, _ = decoder.step(np.asarray([ids], np.int64), np.ones((1, len(ids)), np.int64),
                                    np.arange(len(ids))[None], decoder.empty_cache(1))
        return logits[0]


class _BundleBlipVqa(_BundleBlip):
    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": preprocess([image], p.manifest["preprocessing"])}

        def answer():
            return p.answer_tokens(image, QUESTIONS[0], max_new_tokens=ANSWER_TOKENS, stop_token_ids=())

        return {"vision": lambda: p.run("vision", pixels), "answer": answer}, ("tokens", ANSWER_TOKENS, answer)

    def generated(self, image, index: int) -> list[int]:
        return self.p.answer_tokens(image, QUESTIONS[index % len(QUESTIONS)], max_new_tokens=ANSWER_TOKENS)

    def teacher_logits(self, image, index: int) -> np.ndarray:
        return self._decoder_logits(REFERENCE_ANSWER, self.p.question_decoder(image, QUESTIONS[index % len(QUESTIONS)]))

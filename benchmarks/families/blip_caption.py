"""BLIP captioning's measurement (:mod:`.blip`): a whole caption of ``CAPTION_TOKENS`` tokens timed;
against FP32, the generated captions (exact match, shared prefix, BLEU-4 and CIDEr-D over token ids)
and teacher-forced next-token agreement and KL along a fixed caption, overall and where FP32's
top-1 margin is clear; with --data, CIDEr-D against human captions (or VQA accuracy, blip_vqa.py
shares all of it)."""

from __future__ import annotations

import numpy as np

from edgevfm.runtime.generate import shared_prefix
from edgevfm.runtime.image import preprocess

from .blip import (ANSWER_TOKENS, CAPTION_TOKENS, CLEAR_MARGIN, GOAL_AGREEMENT, REFERENCE_CAPTION, BlipTask,
                   task_work)


class TorchBlip:
    """The FP32 PyTorch reference: transformers' processor and generate."""

    task, tokens, whole = "caption", CAPTION_TOKENS, "caption"

    def __init__(self, checkpoint):
        import torch

        self.torch, self.model = torch, checkpoint.model
        self.processor, self.tokenizer = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"]
        self.config = checkpoint.model.config.text_config

    def pixels(self, image):
        from edgevfm.runtime.image import load_image

        return self.processor([np.asarray(load_image(image))], return_tensors="pt")["pixel_values"]

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def calls(self, image):
        torch, model, pixels = self.torch, self.model, self.pixels(image)
        inputs = self.call_inputs()

        def vision():
            with torch.inference_mode():
                return model.vision_model(pixel_values=pixels)

        def whole():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, **inputs, max_new_tokens=self.tokens,
                                      min_new_tokens=self.tokens)

        return {"vision": vision, self.whole: whole}, ("tokens", self.tokens, whole)

    def call_inputs(self) -> dict:
        """What the timed whole call takes beside the pixels (a caption: nothing)."""
        return {}

    def question(self, question: str) -> dict:
        found = self.tokenizer(question, return_tensors="pt")
        return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

    def generated(self, image, question: str | None, fixed: bool) -> list[int]:
        """The caption (answer) ids; ``fixed``: exactly ``tokens`` of them (the stop token barred)."""
        inputs = self.question(question) if question is not None else {}
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=self.pixels(image), max_new_tokens=self.tokens,
                                      min_new_tokens=self.tokens if fixed else 0, **inputs)[0, 1:].tolist()
        return out[:-1] if out and out[-1] == self.config.sep_token_id else out

    def teacher_logits(self, image, question: str | None, text: str) -> np.ndarray:
        """The decoder's logits along ``[DEC] text``, attending to the image (or to the question
        encoded against it)."""
        ids = self.torch.tensor([[self.config.bos_token_id] + self.tokenizer(text, add_special_tokens=False).input_ids])
        with self.torch.inference_mode():
            states, mask = self.model.vision_model(pixel_values=self.pixels(image))[0], None
            if question is not None:
                inputs = self.question(question)
                states, mask = self.model.text_encoder(**inputs, encoder_hidden_states=states)[0], inputs[
                    "attention_mask"]
            return self.model.text_decoder(input_ids=ids, encoder_hidden_states=states,
                                           encoder_attention_mask=mask).logits[0].float().numpy()


class BundleBlip:
    task, tokens, whole = "caption", CAPTION_TOKENS, "caption"

    def __init__(self, pipeline):
        self.p = pipeline

    def text(self, ids: list[int]) -> str:
        return self.p.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": preprocess([image], p.manifest["preprocessing"])}
        whole = self.whole_call(image)
        return {"vision": lambda: p.run("vision", pixels), self.whole: whole}, ("tokens", self.tokens, whole)

    def whole_call(self, image):
        """One whole caption of ``tokens`` tokens (the stop token barred)."""
        return lambda: self.p.caption_tokens([image], max_new_tokens=self.tokens, stop_token_ids=())

    def generated(self, image, question: str | None, fixed: bool) -> list[int]:
        if question is not None:
            return self.p.answer_tokens(image, question, max_new_tokens=ANSWER_TOKENS,
                                        min_new_tokens=ANSWER_TOKENS if fixed else 0)
        return self.p.caption_tokens([image], max_new_tokens=CAPTION_TOKENS,
                                     min_new_tokens=CAPTION_TOKENS if fixed else 0)[0]

    def teacher_logits(self, image, question: str | None, text: str) -> np.ndarray:
        decoder = self.p.question_decoder(image, question) if question is not None else self.p.image_decoder([image])
        ids = self.p.prompt_ids(text)
        _, logits, _ = decoder.step(np.asarray([ids], np.int64), np.ones((1, len(ids)), np.int64),
                                    np.arange(len(ids))[None], decoder.empty_cache(1))
        return logits[0]


class CaptionWork(BlipTask):
    name, whole, reference = "caption", "caption", REFERENCE_CAPTION
    torch_runner, bundle_runner = TorchBlip, BundleBlip

    def say(self, pipeline, image) -> str:
        return pipeline.caption(image)

    def say_of(self, pipeline, scene) -> list[tuple[str, bool]]:
        said = pipeline.caption(scene.image)
        return [(repr(said), said in scene.captions)]

    def outputs(self, bench, runner) -> dict:
        """Each image's generated text (a caption, or the answer to one question) as token ids and
        text, the teacher-forced logits along the reference caption (answer), and the texts for
        the annotated images."""
        questions = bench.questions()
        ids = [runner.generated(image, q, fixed=True) for image, q in zip(bench.images, questions)]
        return {"ids": ids, "texts": [runner.text(i) for i in ids],
                "logits": np.stack([runner.teacher_logits(image, q, self.reference)
                                    for image, q in zip(bench.images, questions)]),
                "data_texts": [runner.text(runner.generated(image, a.question, fixed=False))
                               for image, a in zip(bench.data_images, bench.annotated)]}

    def accuracy(self, bench, ref: dict, out: dict) -> dict:
        from edgevfm.runtime.sampling import softmax

        from ..captions import bleu4, cider_d, vqa_metrics

        vocab = ref["logits"].shape[-1]
        p = softmax(ref["logits"].reshape(-1, vocab).astype(np.float64))
        q = softmax(out["logits"].reshape(-1, vocab).astype(np.float64))
        top2 = np.sort(p, axis=-1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        clear = margin >= CLEAR_MARGIN
        agree = p.argmax(-1) == q.argmax(-1)
        prefix = [shared_prefix(a, b) / max(1, len(a)) for a, b in zip(ref["ids"], out["ids"])]
        fp32 = [[ids] for ids in ref["ids"]]  # token ids: no tokenizer between two models' outputs
        metrics = {"next_token_top1_agreement": float(agree.mean()),
                   "clear_margin_top1_agreement": float(agree[clear].mean()) if clear.any() else None,
                   "clear_margin_positions": f"{int(clear.sum())} of {len(clear)}",
                   "fp32_top1_margin": float(margin.mean()),
                   "kl_divergence_mean": float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), -1))),
                   "exact_match": float(np.mean([a == b for a, b in zip(ref["ids"], out["ids"])])),
                   "prefix_agreement": float(np.mean(prefix)),
                   "bleu4_vs_fp32": bleu4(out["ids"], fp32), "cider_vs_fp32": cider_d(out["ids"], fp32)}
        if bench.annotated and bench.data_task == "vqa":
            metrics.update(vqa_metrics(out["data_texts"], bench.annotated))
        elif bench.annotated:
            metrics["cider"] = cider_d(out["data_texts"], [a.truths for a in bench.annotated])
            metrics["bleu4"] = bleu4(out["data_texts"], [a.truths for a in bench.annotated])
        return metrics

    def workload(self, bench, found: dict) -> dict:
        return found | {
            "caption_tokens": CAPTION_TOKENS, "teacher_forced_caption": REFERENCE_CAPTION,
            "note": "latency at batch 1: vision is one image; caption is the whole greedy caption of "
                    f"{CAPTION_TOKENS} tokens (vision, cross keys/values and every decoder step); exact match: the "
                    f"caption's tokens equal FP32's (captions of exactly {CAPTION_TOKENS} tokens, the stop token "
                    "barred until then); BLEU-4 and CIDEr-D against FP32's captions, over token ids (CIDEr's "
                    "document frequencies over those few captions); with --data, CIDEr-D and BLEU-4 against the "
                    "human captions"}

    def goal(self, row: dict) -> dict:
        acc = row["accuracy"]
        clear = acc["clear_margin_top1_agreement"]
        return {"goal": f"{row['name']}: teacher-forced next-token agreement >= {GOAL_AGREEMENT:.0%} "
                        f"where the FP32 top-1 margin is >= {CLEAR_MARGIN}",
                "met": bool(clear is not None and clear >= GOAL_AGREEMENT),
                "measured": (f"{clear:.0%}" if clear is not None else "no clear positions")
                            + f" at {acc['clear_margin_positions']} positions; overall "
                            f"{acc['next_token_top1_agreement']:.0%} (FP32 top-1 margin "
                            f"{acc['fp32_top1_margin']:.3f})"}


task_work(CaptionWork())

"""BLIP benchmark: captioning, VQA and retrieval bundles.

Latency: the vision encoder, and a whole caption (or answer) of a fixed length (``CAPTION_TOKENS``
/ ``ANSWER_TOKENS`` tokens, no early stop, so every row does the same work). Accuracy against the
FP32 PyTorch model: the generated texts (of that same fixed length: the stop token is barred until
then, as transformers' ``min_new_tokens``, since random weights often stop at once and empty
captions would all agree) compared by exact match and shared prefix (token ids), BLEU-4 and
CIDEr-D against the FP32 texts (over token ids), and teacher-forced next-token agreement and KL along a fixed
caption (answer), overall and at the positions where the FP32 top-1 margin is clear (random
weights leave most logits near-tied: the margin is printed beside every agreement figure).
With ``--data`` (a COCO-captions or VQA annotation folder, :mod:`..captions`), each row's CIDEr-D
against the human captions, or its VQA accuracy, too.
Retrieval bundles: the vision encoder and one whole ``match`` (vision, ITM head, both ITC
projections); against FP32, the ITM probability and ITC cosine differences over every pair of a
few photos and captions, and whether each query's top-1 (text -> image, image -> text, by ITC as
``retrieve`` ranks) is FP32's, beside FP32's own top-1 margin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevfm.quantize.calibration import skimage_photos
from edgevfm.runtime.generate import shared_prefix
from edgevfm.runtime.image import preprocess

from . import BENCH
from .base import Bench

CAPTION_TOKENS, ANSWER_TOKENS = 20, 8
REFERENCE_CAPTION = "a photo of a cat sitting on a couch next to a cup of coffee"
QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?")
REFERENCE_ANSWER = "a cat sitting on a couch"
TEXTS = ("a photo of a cat", "an astronaut in a space suit", "a cup of coffee on a table", "a rocket on the pad",
         "a man riding a horse", "a black and white photo of a street")
GOAL_ITM_DIFF = 0.02  # retrieval: largest ITM probability difference from FP32
CLEAR_MARGIN = 0.1  # FP32 top-1 minus top-2 probability at which a position counts as clear
GOAL_SPEEDUP, GOAL_AGREEMENT = 2.0, 0.90


@BENCH.register("blip")
class BlipBench(Bench):
    demo_runs = 5
    # the generic recipes and OpenVINO's INT8 and INT4 (ov-fp32/ov-bf16/ov-int8-plain would add a
    # minute each to make demo, and say little about captions that ov-int8 does not)
    demo_recipes = ("int8-dynamic", "int8-static", "int4", "fp16", "ov-int8", "ov-int4")
    quick_recipes = ("int8-dynamic", "int8-static", "fp16", "ov-int8")  # make demo
    # --recipe auto: the figures a candidate is held to (see benchmarks/auto.py), and their defaults
    cosine_keys = ()
    agreement_keys = ("next_token_top1_agreement", "text_to_image_top1_agreement", "image_to_text_top1_agreement")
    auto_floor = {"min_cosine": None, "max_drop": 0.05}
    max_runs = {"caption": 5, "answer": 5}
    tasks = ("caption", "vqa", "retrieval")  # what the bundles may do; annotations must be of the bundles' task

    @staticmethod
    def demo(bundles: list[Path], report_dir: Path, threads: int) -> None:
        """Prints each bundle's caption of scikit-image's cat (a VQA bundle: its answer)."""
        import skimage.data

        from edgevfm.runtime import load

        for path in bundles:
            pipeline = load(path, threads=threads)
            if pipeline.manifest.get("task") == "vqa":
                said = f"Q: {QUESTIONS[0]} A: {pipeline.answer(skimage.data.chelsea(), QUESTIONS[0])}"
            elif pipeline.manifest.get("task") == "retrieval":
                scores = pipeline.match(skimage.data.chelsea(), TEXTS[0])
                said = f"{TEXTS[0]!r}: ITM {scores['itm']:.3f}, ITC {scores['itc']:.3f}"
            else:
                said = pipeline.caption(skimage.data.chelsea())
            print(f"      {path.name:>13}: {said or '(nothing: the model chose its stop token first)'}")

    def __init__(self, data: str | None = None):
        from edgevfm.runtime.image import load_image

        from ..captions import read_annotations

        from edgevfm.runtime.errors import InputError

        self.images = skimage_photos()[:3]
        try:
            self.data_task, self.annotated = read_annotations(data) if data else (None, [])
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.data_images = [np.asarray(load_image(a.image)) for a in self.annotated]
        self.task = "caption"

    def check_bundles(self, bundles) -> None:
        """Refuse, before measuring anything, bundles this benchmark cannot measure, and
        annotations of another task than the bundles'."""
        from edgevfm.runtime.errors import InputError

        for bundle in bundles:
            task = bundle.manifest.get("task", "caption")
            if task not in self.tasks:
                raise InputError(f"the {bundle.manifest['family']} benchmark measures {' and '.join(self.tasks)} "
                                 f"bundles so far; {bundle.path} is a {task} bundle")
            self.task = task
        if self.data_task and self.task == "retrieval":
            raise InputError("--data is measured for captioning and VQA bundles; recall on annotations for a "
                             "retrieval bundle is not built yet: bench it without --data")
        if self.data_task and self.data_task != self.task:
            raise InputError(f"--data holds {self.data_task} annotations, but the bundles are {self.task} bundles: "
                             f"give {'a COCO-captions' if self.task == 'caption' else 'VQA'} annotation folder")

    def torch_runner(self, checkpoint):
        from edgevfm.export.families.blip import task_of

        return {"vqa": _TorchBlipVqa, "retrieval": _TorchBlipRetrieval}.get(task_of(checkpoint.model),
                                                                              _TorchBlip)(checkpoint)

    def bundle_runner(self, pipeline):
        return {"vqa": _BundleBlipVqa, "retrieval": _BundleBlipRetrieval}.get(pipeline.manifest["task"],
                                                                               _BundleBlip)(pipeline)

    def calls(self, runner, batch: int):
        return runner.calls(self.images[0])

    def questions(self) -> list[str | None]:
        """The question put with each image (None: a caption)."""
        return [QUESTIONS[i % len(QUESTIONS)] if self.asks else None for i in range(len(self.images))]

    @property
    def asks(self) -> bool:
        return self.task == "vqa"

    def outputs(self, runner) -> dict:
        """Each image's generated text (a caption, or the answer to one question) as token ids and
        text, the teacher-forced logits along the reference caption (answer), and the texts for
        the annotated images."""
        self.task = runner.task
        if self.task == "retrieval":
            return runner.scores(self.images, TEXTS)
        reference = REFERENCE_ANSWER if self.asks else REFERENCE_CAPTION
        ids = [runner.generated(image, q, fixed=True) for image, q in zip(self.images, self.questions())]
        return {"ids": ids, "texts": [runner.text(i) for i in ids],
                "logits": np.stack([runner.teacher_logits(image, q, reference)
                                    for image, q in zip(self.images, self.questions())]),
                "data_texts": [runner.text(runner.generated(image, a.question, fixed=False))
                               for image, a in zip(self.data_images, self.annotated)]}

    def accuracy(self, ref: dict, out: dict) -> dict:
        from edgevfm.runtime.sampling import softmax

        from ..captions import bleu4, cider_d, vqa_accuracy

        if "itm" in ref:
            return _retrieval_accuracy(ref, out)
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
        if self.annotated and self.data_task == "vqa":
            metrics["vqa_accuracy"] = float(np.mean([vqa_accuracy(said, a.truths)
                                                     for said, a in zip(out["data_texts"], self.annotated)]))
        elif self.annotated:
            metrics["cider"] = cider_d(out["data_texts"], [a.truths for a in self.annotated])
            metrics["bleu4"] = bleu4(out["data_texts"], [a.truths for a in self.annotated])
        return metrics

    def workload(self) -> dict:
        found = {"images": len(self.images), "clear_margin": CLEAR_MARGIN,
                 "annotated": f"{len(self.annotated)} {self.data_task} items" if self.annotated else None}
        if self.task == "retrieval":
            return found | {
                "texts": list(TEXTS),
                "note": "latency at batch 1: vision is one image; match is one whole match() (vision, ITM head, "
                        "image and text projections); accuracy over every image-text pair: ITM probability and ITC "
                        "cosine differences from FP32, and the share of queries (each text over the images, each "
                        "image over the texts) whose top-1 by ITC is FP32's"}
        if self.asks:
            return found | {
                "questions": list(QUESTIONS), "answer_tokens": ANSWER_TOKENS, "teacher_forced_answer": REFERENCE_ANSWER,
                "note": "latency at batch 1: vision is one image; answer is the whole greedy answer of "
                        f"{ANSWER_TOKENS} tokens to one question (vision, question encoder, cross keys/values and "
                        "every decoder step); exact match: the answer's tokens equal FP32's (answers of exactly "
                        f"{ANSWER_TOKENS} tokens, the stop token barred until then); BLEU-4 and CIDEr-D "
                        "against FP32's answers, over token ids; VQA accuracy (with --data): min(1, humans who "
                        "gave the answer / 3)"}
        return found | {
            "caption_tokens": CAPTION_TOKENS, "teacher_forced_caption": REFERENCE_CAPTION,
            "note": "latency at batch 1: vision is one image; caption is the whole greedy caption of "
                    f"{CAPTION_TOKENS} tokens (vision, cross keys/values and every decoder step); exact match: the "
                    f"caption's tokens equal FP32's (captions of exactly {CAPTION_TOKENS} tokens, the stop token "
                    "barred until then); BLEU-4 and CIDEr-D against FP32's captions, over token ids (CIDEr's "
                    "document frequencies over those few captions); with --data, CIDEr-D and BLEU-4 against the "
                    "human captions"}

    def goals(self, rows: list[dict], peaks: dict, peers: dict | None = None, machine: dict | None = None) -> list[dict]:
        torch_row = next(r for r in rows if r["kind"] == "pytorch")
        verdicts = []
        whole = next(k for k in ("answer", "match", "caption") if k in torch_row["latency_ms"])
        for row in rows:
            if row["kind"] != "bundle" or row["recipe"] is None:
                continue
            speedup = torch_row["latency_ms"][whole]["p50"] / row["latency_ms"][whole]["p50"]
            verdicts.append({"goal": f"{row['name']}: a whole {whole} at least {GOAL_SPEEDUP:.0f}x faster than PyTorch "
                                     "eager FP32", "met": bool(speedup >= GOAL_SPEEDUP),
                             "measured": f"{speedup:.2f}x ({row['latency_ms'][whole]['p50']:.1f} ms vs "
                                         f"{torch_row['latency_ms'][whole]['p50']:.1f} ms)"})
            acc = row["accuracy"]
            if whole == "match":
                agree = min(acc["text_to_image_top1_agreement"], acc["image_to_text_top1_agreement"])
                verdicts.append({"goal": f"{row['name']}: ITM probability within {GOAL_ITM_DIFF} of FP32 and the top-1 "
                                         f"of >= {GOAL_AGREEMENT:.0%} of retrieval queries (both ways) FP32's",
                                 "met": bool(acc["itm_probability_diff_max"] <= GOAL_ITM_DIFF
                                             and agree >= GOAL_AGREEMENT),
                                 "measured": f"ITM difference {acc['itm_probability_diff_max']:.4f} at most; top-1 "
                                             f"agreement {acc['text_to_image_top1_agreement']:.0%} text -> image, "
                                             f"{acc['image_to_text_top1_agreement']:.0%} image -> text (FP32 ITC top-1 "
                                             f"margin {acc['fp32_itc_top1_margin']:.4f})"})
                continue
            clear = acc["clear_margin_top1_agreement"]
            verdicts.append({"goal": f"{row['name']}: teacher-forced next-token agreement >= {GOAL_AGREEMENT:.0%} "
                                     f"where the FP32 top-1 margin is >= {CLEAR_MARGIN}",
                             "met": bool(clear is not None and clear >= GOAL_AGREEMENT),
                             "measured": (f"{clear:.0%}" if clear is not None else "no clear positions")
                                         + f" at {acc['clear_margin_positions']} positions; overall "
                                         f"{acc['next_token_top1_agreement']:.0%} (FP32 top-1 margin "
                                         f"{acc['fp32_top1_margin']:.3f})"})
        return verdicts


def _retrieval_accuracy(ref: dict, out: dict) -> dict:
    """ITM / ITC differences over every (image, text) pair and top-1 agreement both ways."""
    itc = ref["itc"]
    margins = [np.sort(v)[-1] - np.sort(v)[-2] for v in (*itc, *itc.T)]
    return {"itm_probability_diff_max": float(np.abs(ref["itm"] - out["itm"]).max()),
            "itm_probability_diff_mean": float(np.abs(ref["itm"] - out["itm"]).mean()),
            "itc_cosine_diff_max": float(np.abs(itc - out["itc"]).max()),
            "text_to_image_top1_agreement": float(np.mean(itc.argmax(0) == out["itc"].argmax(0))),
            "image_to_text_top1_agreement": float(np.mean(itc.argmax(1) == out["itc"].argmax(1))),
            "fp32_itc_top1_margin": float(np.mean(margins))}


class _TorchBlip:
    """The FP32 PyTorch reference: transformers' processor and generate."""

    task, tokens = "caption", CAPTION_TOKENS

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
        inputs = self.question(QUESTIONS[0]) if self.task == "vqa" else {}

        def vision():
            with torch.inference_mode():
                return model.vision_model(pixel_values=pixels)

        def whole():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, **inputs, max_new_tokens=self.tokens,
                                      min_new_tokens=self.tokens)

        return {"vision": vision, "answer" if self.task == "vqa" else "caption": whole}, ("tokens", self.tokens, whole)

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


class _TorchBlipVqa(_TorchBlip):
    """The FP32 PyTorch reference for VQA: the question encoded against the image, the answer
    decoded against the question, as ``BlipForQuestionAnswering.generate``."""

    task, tokens = "vqa", ANSWER_TOKENS


class _BundleBlip:
    task = "caption"

    def __init__(self, pipeline):
        self.p = pipeline

    def text(self, ids: list[int]) -> str:
        return self.p.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": preprocess([image], p.manifest["preprocessing"])}
        if self.task == "vqa":
            name, tokens = "answer", ANSWER_TOKENS

            def whole():
                return p.answer_tokens(image, QUESTIONS[0], max_new_tokens=tokens, stop_token_ids=())
        else:
            name, tokens = "caption", CAPTION_TOKENS

            def whole():
                return p.caption_tokens([image], max_new_tokens=tokens, stop_token_ids=())

        return {"vision": lambda: p.run("vision", pixels), name: whole}, ("tokens", tokens, whole)

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


class _BundleBlipVqa(_BundleBlip):
    task = "vqa"


class _TorchBlipRetrieval(_TorchBlip):
    """The FP32 PyTorch reference for retrieval: ``BlipForImageTextRetrieval`` with its ITM head
    (a match probability) and without (the ITC cosine)."""

    task = "retrieval"

    def _heads(self, pixels, text: str) -> tuple[float, float]:
        inputs = self.question(text)
        with self.torch.inference_mode():
            itm = self.torch.softmax(self.model(**inputs, pixel_values=pixels).itm_score, -1)[0, 1]
            itc = self.model(**inputs, pixel_values=pixels, use_itm_head=False).itm_score[0, 0]
        return float(itm), float(itc)

    def calls(self, image):
        pixels = self.pixels(image)

        def vision():
            with self.torch.inference_mode():
                return self.model.vision_model(pixel_values=pixels)

        def match():
            return self._heads(pixels, TEXTS[0])

        return {"vision": vision, "match": match}, ("pairs", 1, match)

    def scores(self, images, texts) -> dict:
        found = np.asarray([[self._heads(self.pixels(image), text) for text in texts] for image in images])
        return {"itm": found[..., 0], "itc": found[..., 1]}


class _BundleBlipRetrieval(_BundleBlip):
    task = "retrieval"

    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": preprocess([image], p.manifest["preprocessing"])}

        def match():
            return p.match(image, TEXTS[0])

        return {"vision": lambda: p.run("vision", pixels), "match": match}, ("pairs", 1, match)

    def scores(self, images, texts) -> dict:
        found = [[self.p.match(image, text) for text in texts] for image in images]
        return {key: np.asarray([[pair[key] for pair in row] for row in found]) for key in ("itm", "itc")}

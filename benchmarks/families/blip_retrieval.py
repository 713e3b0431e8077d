"""BLIP retrieval's measurement (:mod:`.blip`): the vision encoder and one whole ``match`` timed;
against FP32, the ITM probability and ITC cosine differences over every pair of a few photos and
captions, and whether each query's top-1 (text -> image, image -> text, by ITC as ``retrieve``
ranks) is FP32's, beside FP32's own top-1 margin."""

from __future__ import annotations

import numpy as np

from edgevfm.runtime.image import preprocess

from .blip import GOAL_AGREEMENT, GOAL_ITM_DIFF, TEXTS, BlipTask, task_work
from .blip_caption import BundleBlip, TorchBlip


def retrieval_accuracy(ref: dict, out: dict) -> dict:
    """ITM / ITC differences over every (image, text) pair and top-1 agreement both ways."""
    itc = ref["itc"]
    margins = [np.sort(v)[-1] - np.sort(v)[-2] for v in (*itc, *itc.T)]
    return {"itm_probability_diff_max": float(np.abs(ref["itm"] - out["itm"]).max()),
            "itm_probability_diff_mean": float(np.abs(ref["itm"] - out["itm"]).mean()),
            "itc_cosine_diff_max": float(np.abs(itc - out["itc"]).max()),
            "text_to_image_top1_agreement": float(np.mean(itc.argmax(0) == out["itc"].argmax(0))),
            "image_to_text_top1_agreement": float(np.mean(itc.argmax(1) == out["itc"].argmax(1))),
            "fp32_itc_top1_margin": float(np.mean(margins))}


class TorchBlipRetrieval(TorchBlip):
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


class BundleBlipRetrieval(BundleBlip):
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


class RetrievalWork(BlipTask):
    name, whole = "retrieval", "match"
    torch_runner, bundle_runner = TorchBlipRetrieval, BundleBlipRetrieval

    def say(self, pipeline, image) -> str:
        scores = pipeline.match(image, TEXTS[0])
        return f"{TEXTS[0]!r}: ITM {scores['itm']:.3f}, ITC {scores['itc']:.3f}"

    def outputs(self, bench, runner) -> dict:
        return runner.scores(bench.images, TEXTS)

    def accuracy(self, bench, ref: dict, out: dict) -> dict:
        return retrieval_accuracy(ref, out)

    def workload(self, bench, found: dict) -> dict:
        return found | {
            "texts": list(TEXTS),
            "note": "latency at batch 1: vision is one image; match is one whole match() (vision, ITM head, "
                    "image and text projections); accuracy over every image-text pair: ITM probability and ITC "
                    "cosine differences from FP32, and the share of queries (each text over the images, each "
                    "image over the texts) whose top-1 by ITC is FP32's"}

    def goal(self, row: dict) -> dict:
        acc = row["accuracy"]
        agree = min(acc["text_to_image_top1_agreement"], acc["image_to_text_top1_agreement"])
        return {"goal": f"{row['name']}: ITM probability within {GOAL_ITM_DIFF} of FP32 and the top-1 "
                        f"of >= {GOAL_AGREEMENT:.0%} of retrieval queries (both ways) FP32's",
                "met": bool(acc["itm_probability_diff_max"] <= GOAL_ITM_DIFF and agree >= GOAL_AGREEMENT),
                "measured": f"ITM difference {acc['itm_probability_diff_max']:.4f} at most; top-1 "
                            f"agreement {acc['text_to_image_top1_agreement']:.0%} text -> image, "
                            f"{acc['image_to_text_top1_agreement']:.0%} image -> text (FP32 ITC top-1 "
                            f"margin {acc['fp32_itc_top1_margin']:.4f})"}


task_work(RetrievalWork())

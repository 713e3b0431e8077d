"""BLIP retrieval's measurement (:mod:`.blip`): the vision encoder and one whole ``match`` timed;
against FP32, the ITM probability and ITC cosine differences over every pair of a few photos and
captions, and whether each query's top-1 (text -> image, image -> text, by ITC as ``retrieve``
ranks) is FP32's, beside FP32's own top-1 margin."""

from __future__ import annotations

import numpy as np

from edgevfm.runtime.image import preprocess
from edgevfm.runtime.sampling import softmax

from .blip import GOAL_AGREEMENT, GOAL_ITM_DIFF, TEXTS, BlipTask, task_work
from .blip_caption import BundleBlip, TorchBlip


def negatives(texts: list[str]) -> list[int]:
    """For each item, the index of the item whose text it is matched against as a false pair: the
    item half the list away, or the next one after it whose text differs."""
    n = len(texts)
    found = []
    for i in range(n):
        j = (i + n // 2) % n
        while texts[j] == texts[i] and j != (i - 1) % n:
            j = (j + 1) % n
        found.append(j)
    return found


def task_scores(scores: dict) -> dict:
    """Against ground truth (image i's caption is text i): ITM accuracy over each image's true
    pair and one false pair (probability above / below 0.5), and recall@1 both ways by ITC."""
    itc, truth = scores["itc"], np.arange(len(scores["itc"]))
    right = np.concatenate([scores["itm_true"] > 0.5, scores["itm_false"] < 0.5])
    return {"itm_accuracy": float(right.mean()),
            "text_to_image_recall@1": float(np.mean(itc.argmax(0) == truth)),
            "image_to_text_recall@1": float(np.mean(itc.argmax(1) == truth))}


def retrieval_accuracy(ref: dict, out: dict) -> dict:
    """ITM / ITC differences over every (image, text) pair and top-1 agreement both ways."""
    itc = ref["itc"]
    margins = [np.sort(v)[-1] - np.sort(v)[-2] for v in (*itc, *itc.T)]
    metrics = {"itm_probability_diff_max": float(np.abs(ref["itm"] - out["itm"]).max()),
            "itm_probability_diff_mean": float(np.abs(ref["itm"] - out["itm"]).mean()),
            "itc_cosine_diff_max": float(np.abs(itc - out["itc"]).max()),
            "text_to_image_top1_agreement": float(np.mean(itc.argmax(0) == out["itc"].argmax(0))),
            "image_to_text_top1_agreement": float(np.mean(itc.argmax(1) == out["itc"].argmax(1))),
            "fp32_itc_top1_margin": float(np.mean(margins))}
    if "data" in out:
        metrics.update(task_scores(out["data"]))
    return metrics


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

    def data_scores(self, images, texts) -> dict:
        """ITC cosines of every image against every text, and the ITM probability of each image
        with its own text and with its :func:`negatives` text (the vision tower once per image)."""
        torch, model = self.torch, self.model
        with torch.inference_mode():
            embeds = [model.vision_model(pixel_values=self.pixels(image))[0] for image in images]
            tokens = [self.question(text) for text in texts]
            image_feat = torch.cat([torch.nn.functional.normalize(model.vision_proj(e[:, 0]), dim=-1) for e in embeds])
            text_feat = torch.cat([torch.nn.functional.normalize(model.text_proj(model.text_encoder(**t)[0][:, 0]),
                                                                 dim=-1) for t in tokens])

            def itm(e, t):
                states = model.text_encoder(**t, encoder_hidden_states=e)[0][:, 0]
                return float(torch.softmax(model.itm_head(states), -1)[0, 1])

            false = negatives(texts)
            return {"itc": (image_feat @ text_feat.T).numpy(),
                    "itm_true": np.asarray([itm(e, t) for e, t in zip(embeds, tokens)]),
                    "itm_false": np.asarray([itm(e, tokens[j]) for e, j in zip(embeds, false)])}


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

    def data_scores(self, images, texts) -> dict:
        """As :meth:`TorchBlipRetrieval.data_scores`, through the bundle's parts."""
        p = self.p
        embeds = [p.image_embeds([image]) for image in images]
        ids = [p.encode(text, "text") for text in texts]

        def itm(e, i):
            logits = p.run("itm", {"input_ids": i, "attention_mask": np.ones_like(i), "image_embeds": e})["itm_logits"]
            return float(softmax(logits.astype(np.float64))[0, 1])

        false = negatives(texts)
        image_feat = np.concatenate([p.image_features_of(e) for e in embeds])
        return {"itc": image_feat @ p.text_features(texts).T,
                "itm_true": np.asarray([itm(e, i) for e, i in zip(embeds, ids)]),
                "itm_false": np.asarray([itm(e, ids[j]) for e, j in zip(embeds, false)])}


class RetrievalWork(BlipTask):
    name, whole = "retrieval", "match"
    torch_runner, bundle_runner = TorchBlipRetrieval, BundleBlipRetrieval

    def say(self, pipeline, image) -> str:
        scores = pipeline.match(image, TEXTS[0])
        return f"{TEXTS[0]!r}: ITM {scores['itm']:.3f}, ITC {scores['itc']:.3f}"

    def say_of(self, pipeline, scene) -> list[tuple[str, bool]]:
        from ..scenes import HELD_OUT_SEED, scene as make_scene

        other = next(c for i in range(1, 10) for c in [make_scene(HELD_OUT_SEED, 1000 + i).captions[0]]
                     if c not in scene.captions)
        true, false = (pipeline.match(scene.image, text)["itm"] for text in (scene.captions[0], other))
        return [(f"ITM {true:.2f} for its caption", true > 0.5), (f"{false:.2f} for another's", false < 0.5)]

    def outputs(self, bench, runner) -> dict:
        out = runner.scores(bench.images, TEXTS)
        if bench.annotated:  # image i with its first caption (a scene's canonical one)
            out["data"] = runner.data_scores(bench.data_images, [a.truths[0] for a in bench.annotated])
        return out

    def accuracy(self, bench, ref: dict, out: dict) -> dict:
        return retrieval_accuracy(ref, out)

    def workload(self, bench, found: dict) -> dict:
        return found | {
            "texts": list(TEXTS),
            "note": "latency at batch 1: vision is one image; match is one whole match() (vision, ITM head, "
                    "image and text projections); accuracy over every image-text pair: ITM probability and ITC "
                    "cosine differences from FP32, and the share of queries (each text over the images, each "
                    "image over the texts) whose top-1 by ITC is FP32's; with --data (COCO captions: image i "
                    "goes with its first caption), ITM accuracy over each image's true pair and one false pair (the "
                    "caption of the image half the set away) at probability 0.5, and recall@1 both ways by ITC"}

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

"""BLIP-2 retrieval's runners (:mod:`.blip2`): BLIP's retrieval measurement (:mod:`.blip_retrieval`:
the vision part and one whole ``match`` timed; ITM probability and ITC differences over every pair
of a few photos and texts, top-1 agreement both ways) over transformers'
``Blip2ForImageTextRetrieval`` and a BLIP-2 retrieval bundle. ITC is the largest cosine over the
image's query features, as transformers computes it."""

from __future__ import annotations

import numpy as np

from edgevfm.runtime.families.blip2_retrieval import best_query

from .blip_retrieval import BundleBlipRetrieval, TorchBlipRetrieval, negatives


class TorchBlip2Retrieval(TorchBlipRetrieval):
    """The FP32 PyTorch reference: transformers' forward with its ITM head (a match probability)
    and without (the ITC score), the processor's pixels and the tokenizer's ids; timed as BLIP's."""

    def _heads(self, pixels, text: str) -> tuple[float, float]:
        inputs = self.tokenizer(text, return_tensors="pt")
        with self.torch.inference_mode():
            itm = self.model(pixel_values=pixels, **inputs, use_image_text_matching_head=True).logits_per_image
            itc = self.model(pixel_values=pixels, **inputs, use_image_text_matching_head=False).logits_per_image
        return float(self.torch.softmax(itm, -1)[0, 1]), float(itc[0, 0])

    def data_scores(self, images, texts) -> dict:
        """ITC of every image against every text, and the ITM probability of each image with its
        own text and with its :func:`.blip_retrieval.negatives` text."""
        itm = lambda image, text: self._heads(self.pixels(image), text)[0]  # noqa: E731
        false = negatives(texts)
        return {"itc": np.asarray([[self._heads(self.pixels(image), text)[1] for text in texts] for image in images]),
                "itm_true": np.asarray([itm(image, text) for image, text in zip(images, texts)]),
                "itm_false": np.asarray([itm(image, texts[j]) for image, j in zip(images, false)])}


class BundleBlip2Retrieval(BundleBlipRetrieval):
    """A BLIP-2 retrieval bundle: ``match`` and the vision part timed as BLIP's; the data scores
    through its parts (the vision part once per image)."""

    def data_scores(self, images, texts) -> dict:
        p = self.p
        vision = [p.encode_images([image]) for image in images]
        ids = [p.encode(text, "text") for text in texts]
        itc = best_query(p.text_features(texts), np.concatenate([v["image_feats"] for v in vision])).T
        false = negatives(texts)
        return {"itc": itc, "itm_true": np.asarray([p.itm(v["image_embeds"], i) for v, i in zip(vision, ids)]),
                "itm_false": np.asarray([p.itm(v["image_embeds"], ids[j]) for v, j in zip(vision, false)])}

"""BLIP-2 image-text retrieval (``vision``, ``text``, ``itm``), as transformers'
``Blip2ForImageTextRetrieval``: the matching head's probability (ITM, through the Q-Former with the
text) and the contrastive score (ITC: the largest cosine between the image's query features and
the text's ``[CLS]`` feature), and ranking by ITC both ways through :func:`..retrieval.rank`, as
CLIP and BLIP rank. :func:`edgevfm.runtime.load` opens a BLIP-2 bundle whose manifest ``task`` is
``retrieval`` with this pipeline."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UsageError
from ..image import ImageLike, preprocess
from ..retrieval import Match, rank
from ..sampling import softmax
from .blip import BlipPipeline

GENERATIVE = ("caption", "caption_batch", "caption_tokens", "answer", "chat", "complete")


def best_query(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(T, I) ITC: for each text feature (T, E) and image's query features (I, Q, E), the largest
    cosine over the queries."""
    return np.einsum("te,iqe->tiq", texts, images).max(axis=-1)


class Blip2RetrievalPipeline(BlipPipeline):
    """Thread-safe: no per-call state. Images are paths, PIL images or HWC uint8 arrays."""

    family = "blip2"
    task = "retrieval"
    needs = {"vision": (("pixel_values",), ("image_embeds", "image_feats")),
             "text": (("input_ids", "attention_mask"), ("text_feat",)),
             "itm": (("input_ids", "attention_mask", "image_embeds"), ("itm_logits",))}
    batch_size = 16

    @classmethod
    def check_consistency(cls, manifest):
        return []

    def __getattr__(self, name: str):
        """A generating call: a ``UsageError`` that says which checkpoint captions and answers."""
        if name in GENERATIVE:
            def refuse(*args, **kwargs):
                raise UsageError("this BLIP-2 bundle matches images and texts (Blip2ForImageTextRetrieval): to caption "
                                 "or answer, export a Blip2ForConditionalGeneration, e.g. Salesforce/blip2-opt-2.7b "
                                 "(offline: the preset trained:blip2-shapes or random:blip2-tiny)")

            return refuse
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def encode_images(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        """The ``vision`` part's outputs for ``images``: ``image_embeds`` (what ITM attends to) and
        ``image_feats`` (N, queries, projection), batch by batch."""
        images = list(images)
        found = [self.run("vision", {"pixel_values": preprocess(images[i:i + self.batch_size],
                                                                self.manifest["preprocessing"])})
                 for i in range(0, len(images), self.batch_size)]
        return {k: np.concatenate([f[k] for f in found]) for k in ("image_embeds", "image_feats")}

    def itm(self, image_embeds: np.ndarray, ids: np.ndarray) -> float:
        """The matching head's probability of a match for one image's embeddings (1, ...) and
        one text's ids (1, length)."""
        logits = self.run("itm", {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                  "image_embeds": image_embeds})["itm_logits"]
        return float(softmax(logits.astype(np.float64))[0, 1])

    def match(self, image: ImageLike, text: str) -> dict[str, float]:
        """How well ``text`` describes ``image``: ``itm`` the matching head's probability of a
        match, ``itc`` the largest cosine of the image's query features with the text's feature."""
        ids = self.encode(text, "text")
        vision = self.encode_images([image])
        itc = best_query(self.text_feature(ids)[None], vision["image_feats"])[0, 0]
        return {"itm": self.itm(vision["image_embeds"], ids), "itc": float(itc)}

    def image_features(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, queries, projection) unit ITC features of each image's queries."""
        return self.encode_images(images)["image_feats"]

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """(N, projection) unit ITC features of texts (each alone: no padding to another's length)."""
        return np.stack([self.text_feature(self.encode(text, "text")) for text in texts])

    def text_feature(self, ids: np.ndarray) -> np.ndarray:
        """(projection,) unit ITC feature of one text's ids (1, length)."""
        return self.run("text", {"input_ids": ids, "attention_mask": np.ones_like(ids)})["text_feat"][0]

    def retrieve(self, query, gallery, k: int = 5) -> list[Match]:
        """The ``k`` best matches (index, item, ITC score) of ``gallery`` for ``query``: a text query
        ranks images, an image (or an image's path) ranks texts."""
        return rank(query, gallery, k, self.text_features, self.image_features, similarity=best_query)

    def embedders(self):
        """(embed texts, embed images, similarity): what ranking reads (videos too: :mod:`..video`)."""
        return self.text_features, self.image_features, best_query

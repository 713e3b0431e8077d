"""BLIP image-text retrieval (``vision``, ``itm``, ``image_proj``, ``text_proj``): the matching
head's probability (ITM) and the contrastive features' cosine (ITC), and ranking by ITC both ways,
as transformers' ``BlipForImageTextRetrieval``."""

from __future__ import annotations

import numpy as np

from ..image import ImageLike
from ..retrieval import Match, cosine, rank
from ..sampling import softmax
from ..tasks import Task, nonempty_text, register_task
from .blip import BlipPipeline, task_pipeline


@task_pipeline("retrieval")
class BlipRetrievalPipeline(BlipPipeline):
    task_parts = {"itm": (("input_ids", "attention_mask", "image_embeds"), ("itm_logits",)),
                  "image_proj": (("image_embeds",), ("image_feat",)),
                  "text_proj": (("input_ids", "attention_mask"), ("text_feat",))}

    def match(self, image: ImageLike, text: str) -> dict[str, float]:
        """How well ``text`` describes ``image`` (a retrieval bundle): ``itm`` the matching head's
        probability of a match, ``itc`` the cosine of the contrastive features."""
        ids = self.encode(text, "text")
        embeds = self.image_embeds([image])
        logits = self.run("itm", {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": embeds})
        probability = softmax(logits["itm_logits"].astype(np.float64))[0, 1]
        similarity = float(self._text_feature(ids) @ self.image_features_of(embeds)[0])
        return {"itm": float(probability), "itc": similarity}

    def image_features(self, images) -> np.ndarray:
        """(N, projection) unit ITC features of images."""
        return self.image_features_of(self.image_embeds(images))

    def image_features_of(self, embeds: np.ndarray) -> np.ndarray:
        return self.run("image_proj", {"image_embeds": embeds})["image_feat"]

    def text_features(self, texts) -> np.ndarray:
        """(N, projection) unit ITC features of texts (each alone: no padding to another's length)."""
        return np.stack([self._text_feature(self.encode(text, "text")) for text in texts])

    def _text_feature(self, ids: np.ndarray) -> np.ndarray:
        return self.run("text_proj", {"input_ids": ids, "attention_mask": np.ones_like(ids)})["text_feat"][0]

    def retrieve(self, query, gallery, k: int = 5) -> list[Match]:
        """The ``k`` best matches (index, item, ITC cosine) of ``gallery`` for ``query``: a text
        query ranks images, an image (or an image's path) ranks texts, as CLIP's retrieve."""
        return rank(query, gallery, k, self.text_features, self.image_features)

    def embedders(self):
        """(embed texts, embed images, similarity): what ranking reads (videos too: :mod:`..video`)."""
        return self.text_features, self.image_features, cosine


def _match_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image")
    parser.add_argument("text", metavar="TEXT", type=nonempty_text, help="the text to match against it")


def _match(pipeline: BlipRetrievalPipeline, args) -> None:
    scores = pipeline.match(args.image, args.text)
    print(f"itm {scores['itm']:.4f}  itc {scores['itc']:.4f}")


register_task(Task("match", ("blip", "blip2"), "how well TEXT describes IMAGE: ITM probability and ITC score (a "
                   "retrieval bundle)", _match_arguments, _match))

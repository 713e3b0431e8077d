"""CLIP: zero-shot classification and retrieval on a two-part bundle (``vision``, ``text``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..image import ImageLike, preprocess
from ..pipeline import PIPELINES, Pipeline
from ..tasks import Task, register_task
from ..text import TextTokenizer


@dataclass(frozen=True)
class Match:
    """One retrieval hit: its index in the gallery, the item itself and its cosine similarity."""

    index: int
    item: Any = field(repr=False)
    score: float


def is_text(query: Any) -> bool:
    """A query is a text when it is a str that names no existing file (paths are images)."""
    return isinstance(query, str) and not Path(query).is_file()


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@PIPELINES.register("clip")
class ClipPipeline(Pipeline):
    """Embeddings are float32, L2-normalised rows (batch, projection_dim); images are paths,
    PIL images or HWC uint8 arrays in [0, 255]."""

    family = "clip"
    needs = {
        "vision": (("pixel_values",), ("image_embeds",)),
        "text": (("input_ids", "attention_mask"), ("text_embeds",)),
    }
    manifest_keys = ("preprocessing", "tokenizer", "constants")
    batch_size = 16

    def __init__(self, bundle, threads=None, providers=None, low_memory=False):
        super().__init__(bundle, threads=threads, providers=providers, low_memory=low_memory)
        settings = self.manifest["tokenizer"]
        self.tokenizer = TextTokenizer(bundle.file(settings["file"]), settings)
        self.logit_scale = float(self.manifest["constants"]["logit_scale"])

    def image_inputs(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        return {"pixel_values": preprocess(images, self.manifest["preprocessing"])}

    def text_inputs(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.tokenizer.encode(texts)

    def embed_images(self, images: ImageLike | Sequence[ImageLike], normalize: bool = True) -> np.ndarray:
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return self._embed("vision", "image_embeds", self.image_inputs, images, "images", normalize)

    def embed_texts(self, texts: str | Sequence[str], normalize: bool = True) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._embed("text", "text_embeds", self.text_inputs, texts, "texts", normalize)

    def _embed(self, part: str, output: str, make_inputs, items: list, what: str, normalize: bool) -> np.ndarray:
        if not items:
            raise InputError(f"no {what} given: pass at least one")
        embeds = np.concatenate([self.run(part, make_inputs(items[i : i + self.batch_size]))[output]
                                 for i in range(0, len(items), self.batch_size)])
        return _l2(embeds) if normalize else embeds

    def classify(self, image: ImageLike, labels: Sequence[str]) -> list[tuple[str, float]]:
        """Zero-shot: ``(label, probability)`` pairs, most probable first; probabilities sum to 1."""
        labels = _labels(labels)
        probs = softmax(self.logit_scale * self.embed_images([image]) @ self.embed_texts(labels).T)[0]
        order = np.argsort(-probs, kind="stable")
        return [(labels[i], float(probs[i])) for i in order]

    def retrieve(self, query: Any, gallery: Sequence[Any], k: int = 5) -> list[Match]:
        """Text -> images when ``query`` is a text (see :func:`is_text`), image -> texts otherwise.
        Returns the ``k`` best matches of ``gallery``, best first."""
        gallery = list(gallery)
        if not gallery:
            raise InputError("the gallery is empty: pass at least one item to search")
        if k < 1:
            raise InputError(f"k must be at least 1, found {k}")
        if is_text(query):
            q, g = self.embed_texts([query]), self.embed_images(gallery)
        else:
            q, g = self.embed_images([query]), self.embed_texts(_labels(gallery))
        scores = (q @ g.T)[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [Match(int(i), gallery[i], float(scores[i])) for i in order]


def _labels(labels: Sequence[str]) -> list[str]:
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise InputError("the label list is empty: pass at least one label, e.g. ['a cat', 'a dog']")
    bad = [repr(x) for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        raise InputError(f"labels must be non-empty strings, found {', '.join(bad)}")
    return labels


def _classify_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--labels", nargs="+", required=True)


def _classify(pipeline: ClipPipeline, args) -> None:
    for label, prob in pipeline.classify(args.image, args.labels):
        print(f"{prob:8.4f}  {label}")


def _retrieve_arguments(parser) -> None:
    parser.add_argument("--query", required=True, help="a text, or the path of an image")
    parser.add_argument("--images", type=Path, help="folder of images to search (text query)")
    parser.add_argument("--texts", nargs="+", help="texts to search (image query)")
    parser.add_argument("-k", type=int, default=5)


def _retrieve(pipeline: ClipPipeline, args) -> None:
    from ..image import list_images

    if bool(args.images) == bool(args.texts) or (args.images and not is_text(args.query)) or (
            args.texts and is_text(args.query)):
        raise InputError("a text --query searches --images DIR; an image --query searches --texts ...")
    gallery = list_images(args.images) if args.images else list(args.texts)
    for match in pipeline.retrieve(args.query, gallery, k=args.k):
        print(f"{match.score:8.4f}  {match.item}")


register_task(Task("classify", "clip", "zero-shot ranking of --labels for IMAGE", _classify_arguments, _classify))
register_task(Task("retrieve", "clip", "text -> images (--images DIR) or image -> texts (--texts ...)",
                   _retrieve_arguments, _retrieve))

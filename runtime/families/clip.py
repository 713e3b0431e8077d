"""CLIP: zero-shot classification and retrieval on a two-part bundle (``vision``, ``text``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..image import PREPROCESSING, ImageLike, output_size, preprocess
from ..pipeline import PIPELINES, Pipeline, declared, mismatch
from ..retrieval import Match, cosine, is_text, rank
from ..schema import number, obj
from ..tasks import Task, existing_folder, nonempty_text, positive_int, register_task
from ..text import TOKENIZER, TextTokenizer
from ..video import FRAMES


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@PIPELINES.register("clip")
class ClipPipeline(Pipeline):
    """Embeddings are float32, L2-normalised rows (batch, projection_dim); images are paths,
    PIL images or HWC uint8 arrays in [0, 255].

    Thread-safe: it holds no per-call state, so one pipeline may serve many threads at once."""

    family = "clip"
    needs = {
        "vision": (("pixel_values",), ("image_embeds",)),
        "text": (("input_ids", "attention_mask"), ("text_embeds",)),
    }
    manifest_schema = {"preprocessing": PREPROCESSING, "tokenizer": TOKENIZER,
                       "constants": obj({"logit_scale": number(positive=True, high=1e4)})}
    batch_size = 16

    @classmethod
    def check_consistency(cls, manifest):
        pixels = declared(manifest, "vision", "pixel_values")["shape"]
        return mismatch("preprocessing makes images of (height, width), the vision part takes pixel_values of",
                        pixels[2:], output_size(manifest["preprocessing"]) or ("any",))

    def setup(self):
        settings = self.manifest["tokenizer"]
        self.tokenizer = TextTokenizer(self.bundle.file(settings["file"]), settings)
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
        probs = self.label_probabilities([image], labels)[0]
        order = np.argsort(-probs, kind="stable")
        return [(labels[i], float(probs[i])) for i in order]

    def label_probabilities(self, images: Sequence[ImageLike], labels: Sequence[str],
                            label_embeds: np.ndarray | None = None) -> np.ndarray:
        """(N images, labels) zero-shot probabilities, in the labels' order. ``label_embeds``
        (``embed_texts(labels)``) may be passed to reuse them over many calls."""
        labels = _labels(labels)
        if label_embeds is None:
            label_embeds = self.embed_texts(labels)
        return softmax(self.logit_scale * self.embed_images(list(images)) @ label_embeds.T)

    def retrieve(self, query: Any, gallery: Sequence[Any], k: int = 5) -> list[Match]:
        """Text -> images when ``query`` is a text (see :func:`is_text`), image -> texts otherwise.
        Returns the ``k`` best matches of ``gallery``, best first."""
        return rank(query, gallery, k, self.embed_texts, self.embed_images, _labels)

    def embedders(self):
        """(embed texts, embed images, similarity): what ranking reads (videos too: :mod:`..video`)."""
        return self.embed_texts, self.embed_images, cosine


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
    parser.add_argument("--labels", nargs="+", required=True, type=nonempty_text)


def _classify(pipeline: ClipPipeline, args) -> None:
    for label, prob in pipeline.classify(args.image, args.labels):
        print(f"{prob:8.4f}  {label}")


def _retrieve_arguments(parser) -> None:
    parser.add_argument("--query", required=True, type=nonempty_text, help="a text, or the path of an image or a video")
    parser.add_argument("--images", type=existing_folder, help="folder of images to search (text query); "
                        "files that are not readable images are skipped and listed on stderr")
    parser.add_argument("--videos", type=existing_folder, help="folder of videos to search (text query; the [video] "
                        "extra): each the mean of --frames frames' features; unreadable ones are skipped and listed")
    parser.add_argument("--texts", nargs="+", type=nonempty_text, help="texts to search (image or video query)")
    parser.add_argument("--frames", type=positive_int, default=FRAMES,
                        help=f"frames sampled uniformly from each video (default {FRAMES})")
    parser.add_argument("-k", type=positive_int, default=5)


def _retrieve(pipeline, args) -> None:
    import sys

    from ..image import list_images, load_images
    from ..video import is_video, list_videos, retrieve, video_embedding

    searched = [name for name in ("images", "videos", "texts") if getattr(args, name)]
    text_query = is_text(args.query) and not is_video(args.query)  # a video's name that is not there: say so
    if len(searched) != 1 or (searched == ["texts"]) == text_query:
        raise InputError("a text --query searches --images DIR or --videos DIR; an image or video --query searches "
                         "--texts ...")
    if args.texts:
        gallery, names = list(args.texts), list(args.texts)
        if is_video(args.query):
            for match in retrieve(pipeline, args.query, gallery, k=args.k, frames=args.frames):
                print(f"{match.score:8.4f}  {names[match.index]}")
            return
    elif args.videos:
        gallery, skipped = [], []
        for path in list_videos(args.videos):
            try:
                video_embedding(pipeline, path, args.frames)  # cached for the ranking below
                gallery.append(path)
            except InputError as exc:
                skipped.append((path, str(exc)))
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        if not gallery:
            raise InputError(f"no readable videos in {str(args.videos)!r}" + (f" ({len(skipped)} skipped)" if skipped else ""))
        for match in retrieve(pipeline, args.query, gallery, k=args.k, frames=args.frames):
            print(f"{match.score:8.4f}  {gallery[match.index]}")
        return
    else:
        paths = list_images(args.images)
        gallery, skipped = load_images(paths)
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        names = [p for p in paths if p not in {s for s, _ in skipped}]
        if not gallery:
            raise InputError(f"no readable images in {str(args.images)!r}"
                             + (f" ({len(skipped)} skipped)" if skipped else ""))
    for match in pipeline.retrieve(args.query, gallery, k=args.k):
        print(f"{match.score:8.4f}  {names[match.index]}")


register_task(Task("classify", ("clip",), "zero-shot ranking of --labels for IMAGE", _classify_arguments,
                   _classify))
# BLIP's and BLIP-2's retrieval bundles rank the same way (ITC): runtime/families/blip_retrieval.py, blip2_retrieval.py
register_task(Task("retrieve", ("clip", "blip", "blip2"), "text -> images (--images DIR) or videos (--videos DIR), "
                   "image or video -> texts (--texts ...)",
                   _retrieve_arguments, _retrieve))

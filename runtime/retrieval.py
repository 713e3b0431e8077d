"""Ranking a gallery against a query by embedding similarity, both ways (text -> images, image ->
texts): one mechanism for every family with image and text embeddings (CLIP, BLIP's ITC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Match:
    """One retrieval hit: its index in the gallery, the item itself and its cosine similarity."""

    index: int
    item: Any = field(repr=False)
    score: float


def is_text(query: Any) -> bool:
    """A query is a text when it is a str that names no existing file (paths are images)."""
    return isinstance(query, str) and not Path(query).is_file()


def cosine(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(T, I) similarity of unit text and image rows: their cosine."""
    return texts @ images.T


def rank(query: Any, gallery: Sequence[Any], k: int, embed_texts: Callable[[list], np.ndarray],
         embed_images: Callable[[list], np.ndarray], texts: Callable[[list], list[str]] = list,
         similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] = cosine) -> list[Match]:
    """The ``k`` items of ``gallery`` whose embeddings score highest against ``query``'s, best first:
    texts against an image query, images against a text query (see :func:`is_text`). ``texts``
    checks a gallery of texts; the embedders return unit rows; ``similarity(text embeddings, image
    embeddings)`` scores them (T, I) (BLIP-2: the best of an image's query features)."""
    gallery = list(gallery)
    if not gallery:
        raise InputError("the gallery is empty: pass at least one item to search")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, found {k!r}")
    if isinstance(query, str) and not query.strip():
        raise InputError("the query is empty: pass a text, or the path of an image")
    if is_text(query):
        scores = similarity(embed_texts([query]), embed_images(gallery))[0]
    else:
        scores = similarity(embed_texts(texts(gallery)), embed_images([query]))[:, 0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [Match(int(i), gallery[i], float(scores[i])) for i in order]

"""The one-shot endpoints: ``/v1/embeddings`` (CLIP, BLIP and BLIP-2 retrieval bundles; texts and
``image_url`` parts, floats or base64 as OpenAI's client reads them), ``/v1/classify`` (zero-shot),
``/v1/captions`` (BLIP, BLIP-2) and ``/v1/match`` (image-text matching)."""

from __future__ import annotations

import base64

import numpy as np

from .errors import HttpError
from .images import ImageLimits, decode_image, decoded
from .models import Served
from .requests import CaptionRequest, ClassifyRequest, EmbeddingsRequest, MatchRequest, generation_options

BATCH_REQUESTS = 8  # embeddings requests run in one model call at most


def _encoded(vector: np.ndarray, encoding: str):
    vector = np.ascontiguousarray(vector, dtype="<f4")
    return base64.b64encode(vector.tobytes()).decode() if encoding == "base64" else vector.tolist()


def _tokens(pipeline, texts: list[str]) -> int:
    """The texts' token count for ``usage``, where the pipeline's tokenizer says it (0 elsewhere)."""
    tokenizer, count = getattr(pipeline, "tokenizer", None), 0
    for text in texts if tokenizer is not None else []:
        encoded = tokenizer.encode(text)
        ids = getattr(encoded, "ids", None) or (encoded.get("input_ids") if isinstance(encoded, dict) else None)
        count += len(ids) if ids is not None else 0
    return count


async def embeddings(served: Served, body: EmbeddingsRequest, limits: ImageLimits) -> dict:
    """One embedding per input, in order: texts through the text tower, images through the image
    tower, each as the pipeline's ``embed_texts``/``embed_images`` return it (CLIP: L2-normalised;
    BLIP-2: one vector per query, sent as a list of lists, or flattened in base64 with ``shape``).
    Requests are batched (:meth:`Served.batched`): their images are decoded by the worker that runs
    them, one thread hop less per request than decoding apart."""
    pipeline = served.ready("embeddings", "/v1/embeddings")
    inputs = [body.input] if isinstance(body.input, str) else body.input

    texts, images = [], []
    for i, x in enumerate(inputs):
        if isinstance(x, str) or x.type != "image_url":
            text = x if isinstance(x, str) else x.text
            if not isinstance(text, str) or not text.strip():
                raise HttpError(400, f"input.{i}: expected a non-empty string (or a text part with one), found "
                                f"{text!r}", f"input.{i}")
            texts.append((i, text))
        else:
            images.append((i, x.image_url))
    vectors, tokens = await served.batched("embeddings", (len(inputs), texts, images),
                                           lambda items: _embed_many(pipeline, items, limits), BATCH_REQUESTS)
    data = []
    for i, vector in enumerate(vectors):
        item = {"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
        if vector.ndim > 1:
            item["shape"] = list(vector.shape)
        data.append(item)
    return {"object": "list", "data": data, "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _embed_many(pipeline, items: list, limits: ImageLimits) -> list:
    """The outcome of each embeddings request in ``items`` (count, [(index, text)], [(index,
    image_url)]): (vectors in input order, text tokens), or the error that request alone caused.
    All requests' texts go through the text tower in one call, all their images in another; if
    that fails, each request runs alone, so that one request's bad input fails only itself."""
    outcomes: list = [None] * len(items)
    pictures = {}
    for k, (_, _, images) in enumerate(items):
        try:
            pictures[k] = [decode_image(url, limits, f"input.{i}.image_url") for i, url in images]
        except HttpError as exc:
            outcomes[k] = exc
    live = [k for k in range(len(items)) if outcomes[k] is None]
    embed_texts, embed_images, _ = pipeline.embedders()
    try:
        texts = [t for k in live for _, t in items[k][1]]
        pictured = [im for k in live for im in pictures[k]]
        text_vectors = iter(embed_texts(texts) if texts else [])
        image_vectors = iter(embed_images(pictured) if pictured else [])
    except Exception as exc:
        if len(live) == 1:
            outcomes[live[0]] = exc
        else:
            for k in live:
                outcomes[k] = _embed_many(pipeline, [items[k]], limits)[0]
        return outcomes
    for k in live:
        count, texts, images = items[k]
        vectors = dict(zip([i for i, _ in texts], text_vectors))
        vectors.update(zip([i for i, _ in images], image_vectors))
        outcomes[k] = [vectors[i] for i in range(count)], _tokens(pipeline, [t for _, t in texts])
    return outcomes


async def classify(served: Served, body: ClassifyRequest, limits: ImageLimits) -> dict:
    pipeline = served.ready("classify", "/v1/classify")
    image = await decoded(body.image, limits)
    ranked = await served.answer(lambda: pipeline.classify(image, body.labels))
    return {"object": "classification", "model": served.name,
            "labels": [{"label": label, "probability": probability} for label, probability in ranked]}


async def captions(served: Served, body: CaptionRequest, limits: ImageLimits) -> dict:
    pipeline = served.ready("caption", "/v1/captions")
    options = generation_options(body)
    image = await decoded(body.image, limits)
    caption = await served.answer(lambda: pipeline.caption(image, body.prompt, **options))
    return {"object": "caption", "model": served.name, "caption": caption}


async def match(served: Served, body: MatchRequest, limits: ImageLimits) -> dict:
    pipeline = served.ready("match", "/v1/match")
    image = await decoded(body.image, limits)
    scores = await served.answer(lambda: pipeline.match(image, body.text))
    return {"object": "match", "model": served.name, **{k: float(v) for k, v in scores.items()}}

"""SAM's endpoints, in the shape Roboflow Inference made usual: ``/v1/sam/embed`` encodes an image
once and answers an ``image_id``; ``/v1/sam/segment`` prompts it (points, labels, a box, a mask
input) in the decoder's time; ``/v1/sam/masks`` makes the automatic masks. Masks go back as COCO
RLE (``{"size": [H, W], "counts": [...]}``, column-major) or, with ``format: png``, as PNG data
URIs. Embeddings are kept in an LRU bounded by bytes, per model."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from edgevfm.runtime.masks import mask_to_rle

from .errors import HttpError
from .images import ImageLimits, decoded, image_url
from .models import Served
from .requests import SamEmbedRequest, SamMasksRequest, SamSegmentRequest


class Embeddings:
    """Image embeddings by ``image_id`` (the digest of the image's URL), least recently used
    dropped first once they hold more than ``max_bytes``."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes, self.kept, self.size = max_bytes, OrderedDict(), 0
        self.lock = threading.Lock()  # taken by the event loop and the model's worker threads

    def get(self, image_id: str):
        with self.lock:
            found = self.kept.get(image_id)
            if found is not None:
                self.kept.move_to_end(image_id)
            return found

    def put(self, image_id: str, embedding) -> None:
        with self.lock:
            if image_id in self.kept:
                return
            self.kept[image_id], self.size = embedding, self.size + embedding.embeddings.nbytes
            while self.size > self.max_bytes and len(self.kept) > 1:
                _, old = self.kept.popitem(last=False)
                self.size -= old.embeddings.nbytes


def image_id_of(value) -> str:
    return "img-" + hashlib.sha256(image_url(value, "image").encode()).hexdigest()[:32]


def _mask(mask: np.ndarray, form: str):
    if form == "png":
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return mask_to_rle(mask)


async def _embedding(served: Served, cache: Embeddings, value, limits: ImageLimits):
    """(image_id, embedding, cached): the cache's, else the image decoded and encoded (in the
    model's worker) and kept."""
    image_id = image_id_of(value)
    found = cache.get(image_id)
    if found is not None:
        return image_id, found, True
    image = await decoded(value, limits)
    embedding = await served.answer(lambda: served.pipeline.embed(image))
    cache.put(image_id, embedding)
    return image_id, embedding, False


async def embed(served: Served, cache: Embeddings, body: SamEmbedRequest, limits: ImageLimits) -> dict:
    served.ready("segment", "/v1/sam/embed")
    image_id, embedding, cached = await _embedding(served, cache, body.image, limits)
    height, width = embedding.image_size
    return {"object": "sam.embedding", "model": served.name, "image_id": image_id, "width": width, "height": height,
            "cached": cached}


async def segment(served: Served, cache: Embeddings, body: SamSegmentRequest, limits: ImageLimits) -> dict:
    """``predict`` on the image's embedding: by ``image_id`` (from /v1/sam/embed; 404 once dropped
    from the cache) or an ``image`` encoded now and kept."""
    predictor = served.ready("segment", "/v1/sam/segment")
    if (body.image_id is None) == (body.image is None):
        raise HttpError(400, "give either image_id (from /v1/sam/embed) or image, not both", "image_id")
    if body.points is None and body.box is None:
        raise HttpError(400, "a prompt needs points (with labels) or a box", "points")
    if body.image_id is not None:
        image_id, embedding = body.image_id, cache.get(body.image_id)
        if embedding is None:
            raise HttpError(404, f"image_id {body.image_id!r} is not (or no longer) cached: POST /v1/sam/embed again, "
                            "or send the image", "image_id")
    else:
        image_id, embedding, _ = await _embedding(served, cache, body.image, limits)
    labels = body.labels if body.labels is not None or body.points is None else [1] * len(body.points)
    mask_input = None if body.mask_input is None else np.asarray(body.mask_input, np.float32)

    def job():  # the masks are encoded in the worker too: the event loop only sends them
        prediction = predictor.predict(points=body.points, labels=labels, box=body.box, mask_input=mask_input,
                                       multimask=body.multimask, image=embedding)
        return [{"mask": _mask(mask, body.format), "score": float(score)}
                for mask, score in zip(prediction.masks, prediction.scores)]

    found = await served.answer(job)
    return {"object": "sam.segmentation", "model": served.name, "image_id": image_id,  # in the decoder's order
            "masks": found}


async def masks(served: Served, body: SamMasksRequest, limits: ImageLimits) -> dict:
    predictor = served.ready("segment", "/v1/sam/masks")
    image = await decoded(body.image, limits)

    def job():
        found = predictor.generate(image, points_per_side=body.points_per_side, pred_iou_thresh=body.pred_iou_thresh,
                                   stability_score_thresh=body.stability_score_thresh)
        return [{"mask": _mask(m["segmentation"], body.format), "bbox": m["bbox"], "area": m["area"],
                 "predicted_iou": m["predicted_iou"], "stability_score": m["stability_score"]} for m in found]

    return {"object": "sam.masks", "model": served.name, "masks": await served.answer(job)}

"""SAM: ``set_image`` once, then ``predict`` per prompt (points, a box, a previous mask) in a few
milliseconds; ``generate`` for automatic masks (see :mod:`.sam_masks`).

Coordinates are in input-image pixels: points (x, y), boxes XYXY (x0, y0, x1, y1), with
0 <= x <= width and 0 <= y <= height of the image given to ``set_image``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, StateError
from ..image import ImageLike, load_image, preprocess, resized_size
from ..masks import apply_resize, resize_matrices
from ..pipeline import PIPELINES, Pipeline
from ..tasks import Task, register_task


@dataclass
class Prediction:
    """``masks`` (K, H, W) bool at the image's resolution; ``scores`` (K,) predicted IoU;
    ``low_res_logits`` (K, L, L) float32, to pass back as ``mask_input`` for refinement.
    K is 3 with ``multimask=True``, else 1; masks are sorted by nothing: index i is SAM's i-th."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@PIPELINES.register("sam")
class SamPredictor(Pipeline):
    family = "sam"
    needs = {
        "image_encoder": (("pixel_values",), ("image_embeddings",)),
        "prompt_decoder": (("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"),
                           ("low_res_masks", "iou_scores")),
    }
    manifest_keys = ("preprocessing", "constants")

    def __init__(self, bundle, threads=None, providers=None, low_memory=False):
        super().__init__(bundle, threads=threads, providers=providers, low_memory=low_memory)
        constants = self.manifest["constants"]
        self.input_size = int(constants["input_size"])
        self.low_res_size = int(constants["low_res_size"])
        self.mask_threshold = float(constants["mask_threshold"])
        self.embeddings = None

    # -- the image ------------------------------------------------------------------------------
    def set_image(self, image: ImageLike) -> None:
        """Compute and cache the image embedding. ``image``: path, PIL image or HWC uint8 array."""
        pil = load_image(image)
        self.image_size = (pil.height, pil.width)
        self.resized = resized_size(pil.height, pil.width, self.manifest["preprocessing"]["resize"])
        pixels = preprocess([pil], self.manifest["preprocessing"])
        self.embeddings = self.run("image_encoder", {"pixel_values": pixels})["image_embeddings"]
        self._to_image = resize_matrices(self.low_res_size, self.input_size, self.resized, self.image_size)

    def reset_image(self) -> None:
        self.embeddings = None

    # -- prompts ------------------------------------------------------------------------------
    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = True) -> Prediction:
        """One prompt: ``points`` (N, 2) x, y with ``labels`` (N,) 1 = foreground, 0 = background;
        ``box`` (4,) XYXY; ``mask_input`` (L, L) or (1, L, L) low-res logits from an earlier
        prediction. Any mix; at least a point or a box."""
        points = None if points is None else np.asarray(points, dtype=np.float32).reshape(-1, 2)[None]
        labels = None if labels is None else np.asarray(labels, dtype=np.float32).reshape(1, -1)
        boxes = None if box is None else np.asarray(box, dtype=np.float32).reshape(1, 4)
        masks = None if mask_input is None else np.asarray(mask_input, dtype=np.float32).reshape(1, 1, *np.shape(mask_input)[-2:])
        out = self.predict_batch(points, labels, boxes, masks, multimask)
        return Prediction(out.masks[0], out.scores[0], out.low_res_logits[0])

    def predict_batch(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True,
                      return_logits: bool = False) -> Prediction:
        """P prompts on the current image in one decoder call: ``points`` (P, N, 2), ``labels``
        (P, N), ``boxes`` (P, 4), ``mask_input`` (P, 1, L, L). Masks come back as (P, K, H, W);
        with ``return_logits`` they are float32 logits instead of bool."""
        logits, scores = self.decode(points, labels, boxes, mask_input, multimask)
        full = self.to_image(logits)
        return Prediction(full if return_logits else full > self.mask_threshold, scores, logits)

    def decode(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True):
        """The decoder alone: (low-res logits (P, K, L, L), predicted IoU (P, K))."""
        if self.embeddings is None:
            raise StateError("no image set: call set_image(image) before predict()")
        coords, point_labels, prompts = self.prompt_points(points, labels, boxes)
        low = self.low_res_size
        if mask_input is None:
            mask_input, has_mask = np.zeros((prompts, 1, low, low), np.float32), np.zeros(prompts, np.float32)
        else:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.shape != (prompts, 1, low, low):
                raise InputError(f"mask_input must be ({prompts}, 1, {low}, {low}) low-res logits, found {mask_input.shape}")
            has_mask = np.ones(prompts, np.float32)
        out = self.run("prompt_decoder", {"image_embeddings": self.embeddings, "point_coords": coords,
                                          "point_labels": point_labels, "mask_input": mask_input,
                                          "has_mask_input": has_mask})
        pick = slice(1, None) if multimask else slice(0, 1)
        return out["low_res_masks"][:, pick], out["iou_scores"][:, pick]

    def to_image(self, logits: np.ndarray) -> np.ndarray:
        """Low-res logits (..., L, L) -> logits (..., H, W) at the image's resolution: upscale to the
        input frame, crop its padding, resize to the original size (bilinear, as SamProcessor)."""
        return apply_resize(logits, *self._to_image)

    def prompt_points(self, points, labels, boxes):
        """Validate prompts and turn them into the decoder's (coords, labels) in the input frame."""
        if points is None and boxes is None:
            raise InputError("empty prompt: give at least one point (with its label) or a box")
        if (points is None) != (labels is None):
            raise InputError("points and labels go together: give both or neither")
        parts_coords, parts_labels = [], []
        prompts = None
        if points is not None:
            points, labels = np.asarray(points, np.float32), np.asarray(labels, np.float32)
            if points.ndim != 3 or points.shape[-1] != 2 or labels.shape != points.shape[:2]:
                raise InputError(f"points must be (P, N, 2) with labels (P, N); found {points.shape} and {labels.shape}")
            bad = sorted(set(labels.ravel().tolist()) - {0.0, 1.0})
            if bad:
                raise InputError(f"labels must be 1 (foreground) or 0 (background), found {bad}")
            self._check_inside(points.reshape(-1, 2), "point")
            prompts = len(points)
            parts_coords.append(points)
            parts_labels.append(labels)
        if boxes is not None:
            boxes = np.asarray(boxes, np.float32)
            if boxes.ndim != 2 or boxes.shape[1] != 4 or (prompts is not None and len(boxes) != prompts):
                raise InputError(f"boxes must be (P, 4) XYXY, one per prompt; found {boxes.shape}")
            if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
                raise InputError("boxes must be XYXY with x1 > x0 and y1 > y0")
            self._check_inside(boxes.reshape(-1, 2), "box corner")
            prompts = len(boxes)
            parts_coords.append(boxes.reshape(-1, 2, 2))
            parts_labels.append(np.tile(np.float32([2, 3]), (prompts, 1)))
        else:  # SAM's padding point when a prompt has no box
            parts_coords.append(np.zeros((prompts, 1, 2), np.float32))
            parts_labels.append(-np.ones((prompts, 1), np.float32))
        coords = np.concatenate(parts_coords, axis=1).copy()
        (h, w), (rh, rw) = self.image_size, self.resized
        padding = np.concatenate(parts_labels, axis=1) == -1
        coords[..., 0] *= rw / w
        coords[..., 1] *= rh / h
        coords[padding] = 0.0
        return coords, np.concatenate(parts_labels, axis=1), prompts

    def _check_inside(self, xy: np.ndarray, what: str) -> None:
        h, w = self.image_size
        outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
        if outside.any():
            first = xy[np.argmax(outside)].tolist()
            raise InputError(f"{what} {first} lies outside the image: x must be in [0, {w}] and y in [0, {h}] "
                             "(input-image pixels)")

    def generate(self, image: ImageLike, **options) -> list[dict]:
        """Automatic masks for ``image``; see :func:`.sam_masks.generate` for the options."""
        from .sam_masks import generate

        return generate(self, image, **options)


def _xy(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise InputError(f"{what} must be {n} comma-separated numbers, found {text!r}")
    return values


def _segment_arguments(parser) -> None:
    from pathlib import Path

    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y", help="foreground point (repeatable)")
    parser.add_argument("--negative", action="append", default=[], metavar="X,Y", help="background point (repeatable)")
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="box, XYXY in image pixels")
    parser.add_argument("--single", action="store_true", help="one mask instead of the best of three")
    parser.add_argument("--out", type=Path, default=Path("mask.png"), help="mask PNG; the overlay goes beside it")


def _segment(predictor: SamPredictor, args) -> None:
    from ..overlay import overlay, save_mask

    points = [_xy(p, 2, "--point") for p in args.point] + [_xy(p, 2, "--negative") for p in args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    box = _xy(args.box, 4, "--box") if args.box else None
    image = load_image(args.image)
    predictor.set_image(image)
    result = predictor.predict(points=points or None, labels=labels or None, box=box, multimask=not args.single)
    best = int(np.argmax(result.scores))
    save_mask(result.masks[best], args.out)
    picture = args.out.with_name(args.out.stem + ".overlay.png")
    overlay(image, [result.masks[best]], points=points, labels=labels, box=box).save(picture)
    print(f"mask {args.out} ({int(result.masks[best].sum())} pixels, predicted IoU {result.scores[best]:.3f}); "
          f"overlay {picture}")


def _masks_arguments(parser) -> None:
    from pathlib import Path

    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--out", type=Path, default=Path("masks"), help="folder for masks.json, overlay.png, mask_*.png")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument("--crop-layers", type=int, default=0)


def _masks(predictor: SamPredictor, args) -> None:
    import json

    from ..masks import mask_to_rle
    from ..overlay import overlay, save_mask

    image = load_image(args.image)
    found = predictor.generate(image, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                               pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
                               crop_n_layers=args.crop_layers)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(found):
        save_mask(m["segmentation"], args.out / f"mask_{i:03d}.png")
    records = [dict(m, segmentation=mask_to_rle(m["segmentation"])) for m in found]
    (args.out / "masks.json").write_text(json.dumps(records))
    overlay(image, [m["segmentation"] for m in found]).save(args.out / "overlay.png")
    print(f"{len(found)} masks in {args.out} (masks.json as COCO RLE, overlay.png)")


register_task(Task("segment", "sam", "mask for points and/or a box; writes the mask and an overlay PNG",
                   _segment_arguments, _segment))
register_task(Task("masks", "sam", "automatic masks for everything in IMAGE", _masks_arguments, _masks))

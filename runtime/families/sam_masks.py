"""SAM automatic mask generation on a compiled bundle: a grid of point prompts batched through
the decoder, filtered by predicted IoU and stability score, box NMS, optional crop layers; masks
as arrays or COCO RLE. Follows segment-anything's SamAutomaticMaskGenerator."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..image import ImageLike, load_image
from ..masks import mask_boxes, mask_to_rle, nms

MAX_POINTS_PER_SIDE = 128  # 16,384 prompts per crop
MAX_CROP_LAYERS = 4  # 341 crops, each an encoder run


def point_grid(per_side: int) -> np.ndarray:
    """(per_side**2, 2) points in [0, 1]^2 at the centres of a per_side x per_side grid."""
    offset = 1 / (2 * per_side)
    side = np.linspace(offset, 1 - offset, per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    """XYXY crop boxes and their layer: the whole image, then 2^i x 2^i overlapping crops per layer i."""
    boxes = [([0, 0, width, height], 0)]
    short = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2 ** layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = int(np.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(np.ceil((overlap * (per_side - 1) + height) / per_side))
        for y0 in [int((crop_h - overlap) * i) for i in range(per_side)]:
            for x0 in [int((crop_w - overlap) * i) for i in range(per_side)]:
                boxes.append(([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)], layer))
    return boxes


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """IoU of the masks thresholded at threshold + offset and threshold - offset."""
    inter = (logits > threshold + offset).sum(axis=(-1, -2))
    union = (logits > threshold - offset).sum(axis=(-1, -2))
    return inter / np.maximum(union, 1)


def generate(predictor, image: ImageLike, points_per_side: int = 16, points_per_batch: int = 64,
             pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
             stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
             crop_overlap_ratio: float = 512 / 1500, crop_nms_thresh: float = 0.7,
             min_mask_region_area: int = 0, output_mode: str = "binary_mask") -> list[dict]:
    """Masks for everything in ``image``, best predicted IoU first. Each is a dict with
    ``segmentation`` ((H, W) bool, or COCO RLE with ``output_mode="coco_rle"``), ``area`` (pixels),
    ``bbox`` XYWH, ``predicted_iou``, ``stability_score``, ``point_coords`` [[x, y]] and
    ``crop_box`` XYWH, all in input-image pixels."""
    if output_mode not in ("binary_mask", "coco_rle"):
        raise InputError(f"output_mode must be 'binary_mask' or 'coco_rle', found {output_mode!r}")
    _check_int(points_per_side, "points_per_side", 1, MAX_POINTS_PER_SIDE)
    _check_int(points_per_batch, "points_per_batch", 1, None)
    _check_int(crop_n_layers, "crop_n_layers", 0, MAX_CROP_LAYERS)
    _check_int(min_mask_region_area, "min_mask_region_area", 0, None)
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh),
                        ("stability_score_offset", stability_score_offset), ("box_nms_thresh", box_nms_thresh),
                        ("crop_overlap_ratio", crop_overlap_ratio), ("crop_nms_thresh", crop_nms_thresh)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise InputError(f"{name} must be a finite number, found {value!r}")
    pixels = np.asarray(load_image(image))
    height, width = pixels.shape[:2]
    found = []
    crops = crop_boxes(height, width, crop_n_layers, crop_overlap_ratio)
    for box, layer in crops:
        x0, y0, x1, y1 = box
        embedding = predictor.embed(pixels[y0:y1, x0:x1])
        grid = point_grid(max(1, points_per_side // 2 ** layer)) * np.float32([x1 - x0, y1 - y0])
        kept = []
        for start in range(0, len(grid), points_per_batch):
            kept += _batch(predictor, embedding, grid[start:start + points_per_batch], pred_iou_thresh,
                           stability_score_thresh, stability_score_offset)
        kept = [kept[i] for i in _nms(kept, box_nms_thresh)] if kept else []
        for mask in kept:
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = mask["segmentation"]
            mask.update(segmentation=full, point_coords=[[float(mask["point"][0] + x0), float(mask["point"][1] + y0)]],
                        box=mask["box"] + np.float32([x0, y0, x0, y0]), crop_box=[x0, y0, x1 - x0, y1 - y0],
                        crop_area=(x1 - x0) * (y1 - y0))
        found += kept
    if len(crops) > 1 and found:  # prefer masks from smaller crops where crops overlap
        keep = nms(np.stack([m["box"] for m in found]), -np.float32([m["crop_area"] for m in found]), crop_nms_thresh)
        found = [found[i] for i in keep]
    found = [m for m in found if m["segmentation"].sum() >= min_mask_region_area]
    found.sort(key=lambda m: -m["predicted_iou"])
    return [_record(m, output_mode) for m in found]


def _check_int(value, name: str, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        wanted = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InputError(f"{name} must be an integer {wanted}, found {value!r}")


def _batch(predictor, embedding, points, iou_thresh, stability_thresh, offset) -> list[dict]:
    logits, scores = predictor.decode(points[:, None, :], np.ones((len(points), 1), np.float32), image=embedding)
    prompts, k = scores.shape
    logits, scores = logits.reshape(prompts * k, *logits.shape[2:]), scores.reshape(-1)
    origin = np.repeat(np.arange(prompts), k)
    keep = np.flatnonzero(scores > iou_thresh)
    out = []
    for i in keep:  # upscale only what passed the IoU filter, one mask at a time
        full = predictor.to_image(logits[i], image=embedding)
        stability = float(stability_score(full, predictor.mask_threshold, offset))
        if stability < stability_thresh:
            continue
        mask = full > predictor.mask_threshold
        if not mask.any():
            continue
        out.append({"segmentation": mask, "predicted_iou": float(scores[i]), "stability_score": stability,
                    "point": points[origin[i]], "box": mask_boxes(mask[None])[0]})
    return out


def _nms(masks: list[dict], threshold: float) -> np.ndarray:
    return nms(np.stack([m["box"] for m in masks]), np.float32([m["predicted_iou"] for m in masks]), threshold)


def _record(mask: dict, output_mode: str) -> dict:
    x0, y0, x1, y1 = (float(v) for v in mask["box"])
    segmentation = mask["segmentation"]
    return {"segmentation": mask_to_rle(segmentation) if output_mode == "coco_rle" else segmentation,
            "area": int(segmentation.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": mask["predicted_iou"], "stability_score": mask["stability_score"],
            "point_coords": mask["point_coords"], "crop_box": mask["crop_box"]}

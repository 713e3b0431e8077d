"""Mask utilities shared by segmentation pipelines, in numpy: bilinear resizing that matches
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, boxes, NMS and COCO
run-length encoding."""

from __future__ import annotations

import numpy as np


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix M with ``M @ x`` = bilinear resize of x along axis 0
    (half-pixel centres, no antialias: PyTorch's align_corners=False)."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), 1.0 - w1)
    np.add.at(matrix, (rows, i1), w1)
    return matrix.astype(np.float32)


def resize_matrices(low: int, padded: int, valid: tuple[int, int], out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices taking a (low x low) logit map to the original image: upscale to the
    padded input frame, crop the valid (resized) region, resize to ``out`` (height, width)."""
    up = bilinear_matrix(padded, low)
    rows = bilinear_matrix(out[0], valid[0]) @ up[: valid[0]]
    cols = bilinear_matrix(out[1], valid[1]) @ up[: valid[1]]
    return rows, cols


def apply_resize(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(..., low, low) -> (..., H, W) with the matrices of :func:`resize_matrices`. Each (H, W) map
    is column-major in memory (made as its transpose, the same products): COCO RLE reads masks by
    columns, so :func:`mask_to_rle` of a mask thresholded from it copies nothing."""
    return np.swapaxes(cols @ np.swapaxes(logits, -1, -2) @ rows.T, -1, -2)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) XYXY boxes in pixels (x1, y1 inclusive-exclusive); empty masks give 0s."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) XYXY -> (N, M) intersection over union."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(best)
        if len(order):
            order = order[box_iou(boxes[best][None], boxes[order])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: {"size": [H, W], "counts": [...]}, column-major, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.repeat(np.arange(len(rle["counts"])) % 2 == 1, rle["counts"])
    return values.reshape((w, h)).T

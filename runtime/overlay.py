"""Pictures a person can look at: masks blended over the image, with the prompts drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211],
                    [0, 206, 209], [255, 140, 0], [199, 21, 133], [127, 255, 0], [70, 130, 180]], dtype=np.float32)


def overlay(image: Image.Image, masks: list[np.ndarray], points=None, labels=None, box=None,
            alpha: float = 0.5) -> Image.Image:
    """``image`` with each (H, W) bool mask blended in its own colour; foreground points green,
    background points red, the box as a yellow outline."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, mask in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)]
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, min(picture.size) // 100)
    for (x, y), label in zip(points if points is not None else [], labels if labels is not None else []):
        fill = (0, 200, 0) if label == 1 else (220, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(map(float, box)), outline=(255, 215, 0), width=max(2, radius // 2))
    return picture


def save_mask(mask: np.ndarray, path: str | Path) -> Path:
    """A (H, W) bool mask as a black-and-white PNG (255 inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)
    return path

"""Torch-free image loading and preprocessing, driven by the manifest's ``preprocessing`` data.

Reproduces transformers' Pillow image-processor path: convert to RGB (alpha composited on white),
resize with Pillow (``shortest_edge``, ``longest_edge`` or fixed ``height``/``width``), centre-crop,
rescale (in float64, then float32), normalise, then zero-pad bottom-right to ``pad`` if given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def load_image(image: ImageLike) -> Image.Image:
    """An RGB Pillow image from a path, a Pillow image, or an array: HWC (C = 1, 3 or 4) or HW,
    uint8 in [0, 255]. Transparency is composited on white, as transformers does."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image {str(path)!r} does not exist: pass the path of an image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{str(path)!r} is not an image Pillow can read ({exc}): pass a PNG, JPEG, ...") from None
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise InputError(
            f"expected an image as a path, a PIL.Image or a HWC uint8 array, found {type(image).__name__}"
        )
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted; raises if it is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is not a folder: pass a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 in [0, 255], found dtype {array.dtype}: convert with .astype(np.uint8)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return Image.fromarray(array, mode="RGB" if array.shape[-1] == 3 else "RGBA")
    raise InputError(f"image arrays must be HW or HWC with 1, 3 or 4 channels, found shape {array.shape}")


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """(height, width) after scaling the shortest edge to ``shortest`` (long edge truncated)."""
    if width <= height:
        return int(shortest * height / width), shortest
    return shortest, int(shortest * width / height)


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) after scaling the longest edge to ``longest`` (rounded half up), as SAM does."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resized_size(height: int, width: int, resize: dict) -> tuple[int, int]:
    """(height, width) an image of (height, width) has after the manifest's ``resize`` step."""
    if "shortest_edge" in resize:
        return shortest_edge_size(height, width, int(resize["shortest_edge"]))
    if "longest_edge" in resize:
        return longest_edge_size(height, width, int(resize["longest_edge"]))
    return int(resize["height"]), int(resize["width"])


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of an HWC array, zero-padding first where it is smaller than the crop."""
    h, w = array.shape[:2]
    if h < height or w < width:
        new_h, new_w = max(h, height), max(w, width)
        padded = np.zeros((new_h, new_w) + array.shape[2:], dtype=array.dtype)
        top, left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
        padded[top : top + h, left : left + w] = array
        array, h, w = padded, new_h, new_w
    top, left = (h - height) // 2, (w - width) // 2
    return array[top : top + height, left : left + width]


def preprocess(images: Sequence[ImageLike], spec: dict[str, Any]) -> np.ndarray:
    """Images -> float32 NCHW pixel values, normalised per ``spec`` (the manifest's preprocessing)."""
    if len(images) == 0:
        raise InputError("no images given: pass at least one image")
    return np.stack([_preprocess_one(load_image(im), spec) for im in images])


def _preprocess_one(image: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    resample = INTERPOLATION[spec["interpolation"]]
    height, width = resized_size(image.height, image.width, spec["resize"])
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), resample=resample)
    array = np.asarray(image)
    crop = spec.get("crop")
    if crop:
        array = center_crop(array, int(crop["height"]), int(crop["width"]))
    pixels = (array.astype(np.float64) * float(spec["rescale"])).astype(np.float32)
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    pixels = ((pixels - mean) / std).transpose(2, 0, 1)
    pad = spec.get("pad")
    if pad:
        _, h, w = pixels.shape
        pixels = np.pad(pixels, ((0, 0), (0, int(pad["height"]) - h), (0, int(pad["width"]) - w)))
    return pixels

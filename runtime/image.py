"""Torch-free image loading and preprocessing, driven by the manifest's ``preprocessing`` data.

Reproduces transformers' Pillow image-processor path: EXIF orientation applied (as transformers'
``load_image``), convert to RGB (alpha composited on white), resize with Pillow (``shortest_edge``,
``longest_edge`` or fixed ``height``/``width``), centre-crop, rescale (in float64, then float32),
normalise, then zero-pad bottom-right to ``pad`` if given.

Every image goes through :func:`load_image`, which refuses what cannot be an image with an
``InputError``: an unreadable file, an empty image, a decompression bomb (more pixels than
Pillow's ``Image.MAX_IMAGE_PIXELS``), and an aspect ratio so extreme that resizing it for the
model would take more than :data:`MAX_RESIZED_PIXELS`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError
from .schema import bad_value, all_of, boolean, integer, list_of, nullable, number, obj, string

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
MAX_RESIZED_PIXELS = 1 << 24  # 16.7 M pixels, 50 MB as RGB: a 1:300 panorama for a 224-pixel model
MAX_SIDE = 8192
_SIDES = ("shortest_edge", "longest_edge", "height", "width")


def _resize_check(value, where, problems) -> None:
    if not isinstance(value, dict):
        bad_value(problems, where, value, "an object with shortest_edge, longest_edge, or height and width")
        return
    keys = sorted(k for k in value if k in _SIDES)
    if keys not in (["shortest_edge"], ["longest_edge"], ["height", "width"]):
        problems.add(f"{where} has {keys or 'none'} of {', '.join(_SIDES)}: expected shortest_edge, longest_edge, "
                     "or height and width")
        return
    for key in keys:
        integer(1, MAX_SIDE)(value[key], f"{where}.{key}", problems)


def _pad_fits(spec, where, problems) -> None:
    """The zero padding must hold every image the resize (and crop) steps can produce."""
    pad, crop, resize = spec.get("pad"), spec.get("crop"), spec["resize"]
    if not pad:
        return
    biggest = crop or ({"height": resize["longest_edge"], "width": resize["longest_edge"]}
                       if "longest_edge" in resize else resize if "height" in resize else None)
    if biggest is None:
        problems.add(f"{where}.pad needs a bounded size: resize by longest_edge or height and width, or crop")
    elif biggest["height"] > pad["height"] or biggest["width"] > pad["width"]:
        problems.add(f"{where}.pad {pad['height']}x{pad['width']} is smaller than the images it pads "
                     f"({biggest['height']}x{biggest['width']})")


_SIZE = nullable(obj({"height": integer(1, MAX_SIDE), "width": integer(1, MAX_SIDE)}))
PREPROCESSING = all_of(
    obj({"resize": _resize_check, "interpolation": string(choices=INTERPOLATION), "rescale": number(positive=True),
         "mean": list_of(number(), length=3), "std": list_of(number(positive=True), length=3)},
        {"crop": _SIZE, "pad": _SIZE, "convert_rgb": boolean()}),
    _pad_fits,
)
"""The manifest's ``preprocessing`` section, as :mod:`.schema` checks it."""


def load_image(image: ImageLike) -> Image.Image:
    """An RGB Pillow image from a path, an encoded file's bytes, a Pillow image, or an array: HWC (C = 1, 3 or 4) or HW,
    uint8 in [0, 255]. EXIF orientation is applied to files and Pillow images (not to arrays,
    which carry none); transparency is composited on white, as transformers does. Raises
    ``InputError`` for anything that is not a usable image."""
    if isinstance(image, (str, os.PathLike)):
        image = _open(Path(image))
    elif isinstance(image, (bytes, bytearray, memoryview)):  # an encoded file's bytes
        image = _decode(io.BytesIO(image), f"an encoded image of {len(image)} bytes")
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise InputError(
            f"expected an image as a path, encoded bytes, a PIL.Image or a HWC uint8 array, found {type(image).__name__}"
        )
    else:
        check_size(image.width, image.height, "the image")
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # a corrupt EXIF block: Pillow raises many types
            raise InputError(f"the image's EXIF data cannot be read ({exc}): re-save the image") from None
    try:
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"an image of mode {image.mode!r} cannot be converted to RGB ({exc})") from None


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"image {str(path)!r} does not exist: pass the path of an image file")
    return _decode(path, repr(str(path)))


def _decode(source, what: str) -> Image.Image:
    try:  # Pillow warns of a bomb (and refuses one of twice the limit) at open, before decoding
        with Image.open(source) as opened:
            check_size(opened.width, opened.height, what)
            opened.load()
            return ImageOps.exif_transpose(opened)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{what} is a decompression bomb ({exc})") from None
    except Exception as exc:  # a corrupt file: Pillow's decoders raise many types
        detail = str(exc).replace(f" {source!r}", "")  # not the address of a BytesIO
        raise InputError(f"{what} is not an image Pillow can read ({type(exc).__name__}: {detail}): "
                         "pass a PNG, JPEG, ...") from None


def check_size(width: int, height: int, what: str) -> None:
    """An ``InputError`` for an image (or a video frame) of no pixels, or of more than Pillow allows."""
    if width < 1 or height < 1:
        raise InputError(f"{what} is empty ({width}x{height} pixels): pass an image of at least 1x1 pixels")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise InputError(f"{what} has {width}x{height} = {width * height} pixels, more than the {limit} allowed "
                         "(a decompression bomb?): shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")


def load_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Image.Image], list[tuple[Path, str]]]:
    """Load many image files, skipping the bad ones: (images, [(path, why it was skipped)])."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_image(path))
        except InputError as exc:
            skipped.append((Path(path), str(exc)))
    return images, skipped


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted; raises if it is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is not a folder: pass a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if not isinstance(array.dtype, np.dtype) or array.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 in [0, 255], found dtype {array.dtype}: convert with .astype(np.uint8)")
    if array.ndim in (2, 3) and 0 in array.shape[:2]:
        raise InputError(f"the image array is empty (shape {array.shape}): pass an image of at least 1x1 pixels")
    if array.ndim in (2, 3):
        check_size(array.shape[1], array.shape[0], "the image array")
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
    """(height, width) an image of (height, width) has after the manifest's ``resize`` step.
    Raises ``InputError`` where that is empty or over :data:`MAX_RESIZED_PIXELS`, before any
    memory is spent on it."""
    if "shortest_edge" in resize:
        size = shortest_edge_size(height, width, int(resize["shortest_edge"]))
    elif "longest_edge" in resize:
        size = longest_edge_size(height, width, int(resize["longest_edge"]))
    else:
        size = int(resize["height"]), int(resize["width"])
    if min(size) < 1 or size[0] * size[1] > MAX_RESIZED_PIXELS:
        raise InputError(f"an image of {width}x{height} pixels would be resized to {size[1]}x{size[0]} for this "
                         f"model (at most {MAX_RESIZED_PIXELS} pixels, at least 1x1): its aspect ratio is too "
                         "extreme; crop it first")
    return size


def output_size(spec: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) of every image :func:`preprocess` makes with ``spec``, or None where it
    depends on the image (a resize by shortest edge with neither crop nor pad)."""
    for step in ("pad", "crop"):
        if spec.get(step):
            return int(spec[step]["height"]), int(spec[step]["width"])
    resize = spec["resize"]
    return (int(resize["height"]), int(resize["width"])) if "height" in resize else None


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

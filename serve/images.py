"""A request's image -> a checked RGB Pillow image, through the runtime's one image loader.

Images come as OpenAI's ``image_url`` parts take them: a ``data:image/...;base64,...`` URI (or the
``{"url": ...}`` object around it). A remote ``http(s)`` URL is refused unless the server was
started with ``--allow-remote-images``; then it is fetched with the same byte limit as a body.
The pixel count is read from the header before anything is decoded: an image over ``max_pixels``
(a decompression bomb) is a 413 without its pixels ever being allocated."""

from __future__ import annotations

import binascii
import io
import urllib.request
from dataclasses import dataclass

from PIL import Image

try:  # SIMD base64, ~10-40x faster than the standard library's: a data URI is decoded holding the GIL
    from pybase64 import b64decode
except ImportError:  # pragma: no cover - the [serve] extra installs it
    from base64 import b64decode

from edgevfm.runtime.errors import InputError
from edgevfm.runtime.image import load_image

from .errors import HttpError


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 25_000_000  # 5000 x 5000
    max_bytes: int = 20 << 20
    allow_remote: bool = False
    remote_timeout: float = 10.0


def image_url(value, param: str) -> str:
    """The URL of an ``image_url`` value: a string or ``{"url": string}``."""
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise HttpError(400, f"{param} must be an image URL (data:image/png;base64,...) or {{\"url\": ...}}, found "
                        f"{type(value).__name__}", param)
    return value


def fetch_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """The bytes of a data URI, or of a remote URL where the server allows them."""
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        if not comma or not head.endswith(";base64"):
            raise HttpError(400, f"{param}: a data URI must be base64, as data:image/png;base64,<data>", param)
        if len(data) > limits.max_bytes * 4 // 3 + 4:
            raise HttpError(413, f"{param}: the image is over {limits.max_bytes} bytes", param)
        try:
            return b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HttpError(400, f"{param}: its base64 data cannot be decoded ({exc})", param) from None
    if url.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise HttpError(400, f"{param}: remote image URLs are refused by this server: send the image as a data "
                            "URI (data:image/png;base64,...), or start the server with --allow-remote-images", param)
        try:
            with urllib.request.urlopen(url, timeout=limits.remote_timeout) as response:  # noqa: S310 (opted in)
                data = response.read(limits.max_bytes + 1)
        except Exception as exc:
            raise HttpError(400, f"{param}: {url!r} cannot be fetched ({exc})", param) from None
        if len(data) > limits.max_bytes:
            raise HttpError(413, f"{param}: the image at {url!r} is over {limits.max_bytes} bytes", param)
        return data
    raise HttpError(400, f"{param}: expected a data URI (data:image/png;base64,...) or an http(s) URL, found "
                    f"{url[:40]!r}", param)


async def decoded(value, limits: ImageLimits, param: str = "image") -> Image.Image:
    """:func:`decode_image` in a thread of the server's pool, outside the model's worker slot: while
    a model runs one request, the next requests' images are decoded on the other cores."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(decode_image, value, limits, param)


def decode_image(value, limits: ImageLimits, param: str = "image") -> Image.Image:
    """An ``image_url`` value -> an RGB Pillow image; 400 for bytes that are no image, 413 for one
    over ``limits.max_pixels``."""
    data = fetch_bytes(image_url(value, param), limits, param)
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise HttpError(413, f"{param} is a decompression bomb ({exc})", param) from None
    except Exception as exc:  # Pillow raises many types for bytes that are no image
        raise HttpError(400, f"{param} is not an image Pillow can read ({type(exc).__name__}: {exc}): send a PNG, "
                        "JPEG, ...", param) from None
    if opened.width * opened.height > limits.max_pixels:
        raise HttpError(413, f"{param} has {opened.width}x{opened.height} pixels, more than the {limits.max_pixels} "
                        "this server takes: send a smaller image", param)
    try:
        opened.load()
    except Exception as exc:
        raise HttpError(400, f"{param} cannot be decoded ({type(exc).__name__}: {exc}): is it truncated?", param) from None
    try:
        return load_image(opened)
    except InputError as exc:
        raise HttpError(400, f"{param}: {exc}", param) from None

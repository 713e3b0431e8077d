"""Videos for the image pipelines: a few frames sampled uniformly over the clip (or one every
``every`` seconds), each through the one image loader's checks (:func:`.image.load_image`).

Frames are read with PyAV (the ``[video]`` extra): its wheels carry FFmpeg's libraries, so nothing
else is installed; OpenCV's wheel is larger and imageio's FFmpeg reads through a subprocess.

A video embedding, for retrieval, is the mean of its frames' features, L2-normalised (per query
for BLIP-2), as BLIP's zero-shot text-to-video retrieval combines frame features; it is cached in
the process by the file's digest, the frames asked for and the bundle.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InputError, MissingExtraError
from .image import check_size, load_image
from .retrieval import Match, rank

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".gif")
FRAMES = 8  # frames sampled from a clip by default
MAX_FRAMES = 256  # frames one clip may give
MAX_SECONDS = 3600.0  # a longer clip is refused before decoding (sample clips, not films)
MAX_DECODED = 20_000  # frames decoded to find the samples: a clip whose length the container does not say
_CACHE: OrderedDict = OrderedDict()
CACHE_ENTRIES = 256


def is_video(item: Any) -> bool:
    """A path (str or PathLike) whose suffix is a video container's."""
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError as exc:
        raise MissingExtraError("video", "reading videos", exc) from None
    return av


def load_video(path: str | os.PathLike, frames: int = FRAMES, every: float | None = None) -> list[Image.Image]:
    """``frames`` RGB frames of the video at ``path``, at the centres of ``frames`` equal spans of
    its duration; with ``every`` (seconds), one frame each ``every`` seconds instead (at most
    ``MAX_FRAMES``). An ``InputError`` for a file that is not a readable video, a clip without
    frames, one longer than ``MAX_SECONDS``, or frames too large for the image loader."""
    path = Path(path)
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise InputError(f"frames must be an integer from 1 to {MAX_FRAMES}, found {frames!r}")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0
                              or not np.isfinite(every)):
        raise InputError(f"every must be a positive number of seconds, found {every!r}")
    _check_file(path)
    av = _av()
    with _open(av, path) as container:
        stream = _video_stream(container, path)
        seconds = _duration(container, stream)
        if seconds is not None and seconds > MAX_SECONDS:
            raise InputError(f"{str(path)!r} lasts {seconds:.0f} s: longer than the {MAX_SECONDS:.0f} s a clip may "
                             "last; cut the part to look at (ffmpeg -ss START -t SECONDS)")
        if not seconds:  # the container does not say how long: a first pass reads the frames' times alone
            times = [time for time, _ in _decode(av, container, stream, path)]
            seconds = times[-1] + 1e-6 if times else None
    if seconds is None:
        raise InputError(f"{str(path)!r} has no frames: nothing to look at")
    if every is not None:
        wanted = np.arange(every / 2, seconds, every)[:MAX_FRAMES]
    else:
        wanted = (np.arange(frames) + 0.5) * seconds / frames
    with _open(av, path) as container:
        found = _sample(av, container, _video_stream(container, path), path, wanted)
    if not found:
        raise InputError(f"{str(path)!r} has no frames: nothing to look at")
    return [load_image(frame) for frame in found]


def _open(av, path: Path):
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"{str(path)!r} cannot be read as a video ({exc}): expected a video file such as "
                         "an .mp4, .mkv, .avi or .webm") from None


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"{str(path)!r} holds no video stream ({len(container.streams)} streams of other kinds)")
    stream = container.streams.video[0]
    if stream.codec_context.width and stream.codec_context.height:  # else each decoded frame is checked
        check_size(stream.codec_context.width, stream.codec_context.height, "a frame of the video")
    return stream


def _sample(av, container, stream, path: Path, wanted: np.ndarray) -> list[np.ndarray]:
    """For each time in ``wanted`` (ascending), the first frame shown at or after it (the last frame
    past the end), as HWC uint8 RGB: frames are decoded in order and only those picked are kept."""
    found, last, j = [], None, 0
    for time, frame in _decode(av, container, stream, path):
        if j < len(wanted) and wanted[j] <= time:
            picked = frame.to_ndarray(format="rgb24")
            while j < len(wanted) and wanted[j] <= time:
                found.append(picked)
                j += 1
        last = frame
    if last is not None and j < len(wanted):
        found += [last.to_ndarray(format="rgb24")] * (len(wanted) - j)
    return found


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"no video at {str(path)!r}: expected a video file ({', '.join(VIDEO_SUFFIXES)})")


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _decode(av, container, stream, path: Path):
    """(time in seconds, decoded frame) of every frame, in order (at most ``MAX_DECODED``)."""
    count = 0
    try:
        for frame in container.decode(stream):
            if count == MAX_DECODED:
                raise InputError(f"{str(path)!r} has more than {MAX_DECODED} frames: cut the part to look at")
            check_size(frame.width, frame.height, "a frame of the video")
            yield (float(frame.time) if frame.time is not None else float(count)), frame
            count += 1
    except av.error.FFmpegError as exc:
        raise InputError(f"{str(path)!r} breaks off after {count} frames ({exc}): the file is damaged or "
                         "truncated") from None


def digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def video_embedding(pipeline, path: str | os.PathLike, frames: int = FRAMES) -> np.ndarray:
    """The mean of the frames' image features (``pipeline.embedders()``), L2-normalised along the
    last axis: (projection,) for CLIP and BLIP, (queries, projection) for BLIP-2. Cached by the
    file's digest, ``frames`` and the bundle's path."""
    _check_file(Path(path))
    key = (digest(path), frames, str(pipeline.bundle.path))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    _, embed_images, _ = pipeline.embedders()
    mean = embed_images(load_video(path, frames)).mean(axis=0)
    found = mean / np.linalg.norm(mean, axis=-1, keepdims=True).clip(min=1e-12)
    _CACHE[key] = found
    while len(_CACHE) > CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return found


def embed_videos(pipeline, paths, frames: int = FRAMES) -> np.ndarray:
    return np.stack([video_embedding(pipeline, p, frames) for p in paths])


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """The video files of ``folder`` (by suffix), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def retrieve(pipeline, query, gallery, k: int = 5, frames: int = FRAMES) -> list[Match]:
    """Text -> videos (``gallery`` of video paths) or video -> texts (``query`` a video's path),
    through a retrieval pipeline's own ranking (``pipeline.embedders()``: CLIP, BLIP and BLIP-2
    retrieval bundles), each video embedded as :func:`video_embedding` does."""
    embed_texts, _, similarity = pipeline.embedders()
    if is_video(query):
        video_embedding(pipeline, query, frames)  # a video's path that names no file: say so, never rank it as a text
    return rank(query, gallery, k, embed_texts, lambda paths: embed_videos(pipeline, paths, frames),
                similarity=similarity)


def images_of(image, frames: int = FRAMES) -> list:
    """What a vision-language prompt looks at: nothing (None), one image, several (a list or
    tuple), or a video's path (``frames`` frames sampled uniformly, each an image)."""
    if image is None:
        return []
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("the list of images is empty: give at least one image, or None for a chat without one")
        return list(image)
    return load_video(image, frames) if is_video(image) else [image]


def frames_argument(parser) -> None:
    """``--frames N`` for a task whose IMAGE may be a video (read back with :func:`video_options`)."""
    from .tasks import positive_int

    parser.add_argument("--frames", type=positive_int, default=FRAMES,
                        help=f"where IMAGE is a video: how many of its frames, sampled uniformly (default {FRAMES})")


def video_options(pipeline, image, frames: int) -> dict:
    """``{"frames": frames}`` where ``image`` is a video's path and the pipeline looks at several
    images (``several_images``: BLIP-2, LLaVA); an ``InputError`` where it looks at one."""
    if not is_video(image):
        return {}
    if not getattr(pipeline, "several_images", False):
        raise InputError(f"a {pipeline.family} bundle looks at one image, and {str(image)!r} is a video: use a BLIP-2 or "
                         "LLaVA bundle, or take one frame (ffmpeg -ss SECONDS -i VIDEO -frames:v 1 frame.png)")
    return {"frames": frames}

"""Generated clips with known content (a square of one colour crossing a grey frame), encoded with
PyAV, the library the runtime reads them with; and the demo's video-retrieval line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE, FPS = 128, 8


def moving_square(colour, count: int = 16, size: int = SIZE) -> list[np.ndarray]:
    """HWC uint8 frames: a large square of ``colour`` crossing a grey frame from left to right."""
    frames = []
    for i in range(count):
        frame = np.full((size, size, 3), 110, np.uint8)
        x = 10 + i * (size - 60) // count
        frame[40:88, x:x + 48] = colour
        frames.append(frame)
    return frames


def write_video(path, frames, fps: int = FPS, codec: str = "mpeg4") -> Path:
    """Encode HWC uint8 ``frames`` as a video at ``path``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def demo(clip: Path, folder: Path, threads: int) -> None:
    """``edgevfm run CLIP retrieve --query "a large red square" --videos FOLDER`` over two clips
    generated there (a red and a blue square crossing the frame)."""
    from edgevfm.runtime.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / "blue.mp4", moving_square((30, 40, 220)))
    write_video(folder / "red.mp4", moving_square((220, 30, 30)))
    print(f"== video retrieval with {clip.parent.name}, a clip the mean of 8 frames' features ({folder}: a red and a "
          "blue square crossing the frame)")
    main(["run", str(clip), "--threads", str(threads), "retrieve", "--query", "a large red square", "--videos",
          str(folder), "-k", "2"])

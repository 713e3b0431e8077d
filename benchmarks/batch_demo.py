"""The demo's ``edgevfm batch`` line: the scene-trained CLIP classifies held-out scene files, two of
them corrupt, as a Ray Data job on a local Ray, run as a user runs it (the command, in its own
process: the ``[scale]`` layer sits above this one)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

COUNT = 64


def scale_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("ray", "pyarrow"))


def demo(clip: Path, work: Path) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from .scenes import HELD_OUT_SEED, SHAPES, scenes

    images, out = work / "images", work / "out"
    images.mkdir(parents=True, exist_ok=True)
    # a job's folder refuses a new job (--resume finishes the old one): each demo is a new job, so a
    # second `make demo` starts from an empty one rather than fail here
    shutil.rmtree(out, ignore_errors=True)
    truth = {}
    for i, shown in enumerate(scenes(HELD_OUT_SEED, COUNT, start=1000)):
        path = images / f"scene{i:03d}.png"
        Image.fromarray(shown.image).save(path)
        truth[str(path)] = f"a photo of a {shown.label}"
    (images / "corrupt.png").write_bytes(b"not a picture")
    (images / "truncated.png").write_bytes((images / "scene000.png").read_bytes()[:100])
    labels = [f"a photo of a {s}" for s in SHAPES]
    command = [sys.executable, "-m", "edgevfm.runtime.cli", "batch", str(clip), "classify", "--labels", *labels,
               "--input", str(images), "--output", str(out)]
    print(f"== edgevfm batch {clip} classify --input {images} ({COUNT} held-out scenes and 2 corrupt files), "
          "on a local Ray")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"      failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return
    summary = json.loads((out / "summary.json").read_text())
    rows = [r for shard in sorted(out.glob("part-*.parquet")) for r in pq.read_table(shard).to_pylist()]
    right = sum(r["label"] == truth[r["path"]] for r in rows if r["path"] in truth and not r["error"])
    failed = ", ".join(sorted(Path(r["path"]).name for r in rows if r["error"]))
    print(f"      {summary['rows']} rows, {summary['errors']} errors ({failed}), "
          f"{summary['images_per_s']:.1f} images/s on {summary['this_run']['workers']} workers; the largest shape "
          f"named right in {right}/{COUNT}")

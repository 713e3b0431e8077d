"""``python -m edgevfm.scale.benchmark``: ``edgevfm batch`` on a local Ray against a plain loop over
the Python API, on the same image files in the same run.

    python -m edgevfm.scale.benchmark -o benchmarks/reports/batch

For each row (a task on a bundle, over N generated scene images written as PNG files): the plain
loop (one process, ``load(bundle, threads=1)``, batches of ``--batch-size`` read from disk and
decoded) and ``run_batch`` at 1 worker and at 2 workers of 1 thread each. Both sides count the
bundle's loading: the loop loads it once, each Ray worker once. Ray's own start (``ray.init``) is
made once before the rows and not counted. Goals: at 1 worker, Ray costs at most 10% against the
loop; 2 workers give at least 1.6x the images/s of 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from edgevfm.benchmarks.tool import write_report

OVERHEAD_GOAL, SCALING_GOAL = 0.10, 1.6
# (task, model, images, batch size, options): a real-size CLIP and BLIP, and a small trained CLIP
# where Ray's fixed costs per batch weigh most, at the default batch and at a large one. A row needs
# many more batches than workers, or the last batches leave a worker idle: captioning (about 1.5 s
# an image) takes batches of 4.
ROWS = [("embed", "random:clip-vit-b32", 480, 16, {}),
        ("caption", "random:blip-base", 48, 4, {"max_new_tokens": 20}),
        ("embed", "trained:clip-shapes", 4000, 16, {}),
        ("embed", "trained:clip-shapes", 4000, 256, {})]


def _images(folder: Path, count: int) -> list[str]:
    from PIL import Image

    from edgevfm.benchmarks.scenes import scenes

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, shown in enumerate(scenes(seed=31337, count=count)):
        path = folder / f"{i:05d}.png"
        Image.fromarray(shown.image).save(path)
        paths.append(str(path))
    return paths


def plain_loop(task: str, bundle: Path, paths: list[str], options: dict, batch_size: int) -> float:
    """Images/s of the Python API over the files, bundle loading included."""
    from edgevfm.runtime import load

    start = time.perf_counter()
    pipeline = load(bundle, threads=1)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        if task == "embed":
            pipeline.embed_images(chunk)
        else:
            pipeline.caption_batch(chunk, **options)
    return len(paths) / (time.perf_counter() - start)


def run(work: Path, scale: float) -> dict:
    import ray

    from edgevfm.benchmarks.machine import machine_info
    from edgevfm.export.api import export

    from .batch import BatchJob, run_batch

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    rows = []
    try:
        for task, model, count, batch_size, options in ROWS:
            count = max(8, int(count * scale))
            bundle = work / model.split(":")[-1]
            if not bundle.is_dir():
                bundle = export(model, bundle)
            paths = _images(work / f"images-{count}", count) if not (work / f"images-{count}").is_dir() else \
                sorted(str(p) for p in (work / f"images-{count}").glob("*.png"))
            row = {"task": task, "model": model, "images": count, "batch_size": batch_size, "options": options}
            print(f"== {task} {model}: {count} images; plain loop", flush=True)
            row["loop"] = round(plain_loop(task, bundle, paths, options, batch_size), 3)
            for workers in (1, 2):
                out = work / f"out-{task}-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                summary = run_batch(BatchJob({"bundle": str(bundle)}, task, str(paths[0].rsplit("/", 1)[0]),
                                             str(out), options=options, workers=workers, threads=1,
                                             batch_size=batch_size))
                assert summary["errors"] == 0, summary["errors_by_kind"]
                row[f"ray{workers}"] = summary["images_per_s"]
            row["overhead"] = round(1 - row["ray1"] / row["loop"], 3)
            row["scaling"] = round(row["ray2"] / row["ray1"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    return {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(1),
            "ray": ray.__version__, "rows": rows}


def report(results: dict, command: str) -> str:
    m = results["machine"]
    lines = ["# edgevfm batch on Ray against a plain loop", "",
             f"Made by `{command}` on {results['created']}: {m['cpu']}, {m['usable_cores']} cores, ISA `{m['isa']}`; "
             f"Ray {results['ray']} started locally with 2 CPUs; generated 128-px scenes as PNG files, read and "
             "decoded by each side, in batches of the row's size on both sides.", "",
             "| task | model | images | batch | plain loop img/s | Ray 1 worker | Ray 2 workers x 1 thread | Ray's overhead "
             "at 1 worker | 2 workers / 1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        lines.append(f"| {r['task']} | `{r['model']}` | {r['images']} | {r['batch_size']} | {r['loop']} | "
                     f"{r['ray1']} | {r['ray2']} | "
                     f"{100 * r['overhead']:.1f}% | {r['scaling']}x |")
    lines += [""]
    for r in results["rows"]:
        over, scaled = r["overhead"] <= OVERHEAD_GOAL, r["scaling"] >= SCALING_GOAL
        lines.append(f"- {r['task']} `{r['model']}`: overhead {100 * r['overhead']:.1f}% "
                     f"({'meets' if over else 'misses'} the {100 * OVERHEAD_GOAL:.0f}% goal), 2 workers "
                     f"{r['scaling']}x ({'meets' if scaled else 'misses'} the {SCALING_GOAL}x goal).")
    lines += ["", "Both sides load the bundle within the time measured (the loop once, each Ray worker once); "
              "Ray's start is not counted. The plain loop runs one thread; a Ray worker runs one runtime thread.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.scale.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and batch.json")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every row's image count (0.1: a quick run)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgevfm-batch-bench-"))
    try:
        results = run(work, args.scale)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m edgevfm.scale.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(args.output, "batch.json", results, report(results, command))


if __name__ == "__main__":
    sys.exit(main())

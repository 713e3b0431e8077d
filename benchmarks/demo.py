"""The offline demo: export -> quantize (every recipe) -> run -> bench, on a random-weight preset
with the real architecture's sizes; ends by saying where the report is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevfm.export.api import export
from edgevfm.quantize.api import quantize
from edgevfm.quantize.recipes import RECIPES
from edgevfm.runtime import load

from .api import bench


def run_demo(out: str | Path = "demo-out", model: str = "random:clip-vit-b32", report_dir: str | Path | None = None,
             runs: int = 30, threads: int = 2) -> dict:
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out / "report"
    print(f"[1/4] export {model} -> {out / 'fp32'}")
    bundles = [export(model, out / "fp32", force=True)]
    for name in RECIPES.names():
        print(f"[2/4] quantize --recipe {name} -> {out / name}")
        bundles.append(quantize(bundles[0], name, out / name, force=True))
    print("[3/4] run: zero-shot classification of scikit-image's astronaut with each bundle")
    import skimage.data

    labels = ["an astronaut", "a cat", "a rocket", "a cup of coffee"]
    for path in bundles:
        ranking = load(path, threads=threads).classify(np.asarray(skimage.data.astronaut()), labels)
        print(f"      {path.name:>13}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranking))
    print("      (random weights: the ranking is arbitrary; what matters is that every bundle agrees)")
    command = f"edgevfm demo -o {out} --model {model} --report-dir {report_dir} --runs {runs} --threads {threads}"
    print(f"[4/4] bench {len(bundles)} bundles against PyTorch eager FP32 ({threads} threads, {runs} runs)")
    results = bench(bundles, reference=model, out_dir=report_dir, threads=threads, runs=runs, command=command)
    for goal in results["goals"]:
        print(f"      {'MET' if goal['met'] else 'MISSED'}: {goal['goal']} ({goal['measured']})")
    print(f"report: {results['report']} (and report.html, results.json beside it)")
    return results

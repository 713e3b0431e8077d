"""``python -m edgevfm.benchmarks.tensorrt``: what each family's TensorRT-format recipes cost in
accuracy, before any device: the model exported, quantized with each of its family's ``trt-*``
recipes (``Bench.tensorrt_recipes``), benchmarked against FP32 PyTorch with the rows' numerics
simulated on the CPU (labelled so), and each bundle's ``edgevfm check`` verdict per TensorRT version
and its engine plan's profiles.

    python -m edgevfm.benchmarks.tensorrt --model random:clip-vit-b32 -o benchmarks/reports/tensorrt

writes, per model, ``<out>/<model>/`` (the bench report: report.md, results.json) and
``<out>/<model>/tensorrt.md`` (checks, engine plans), and ``<out>/README.md`` listing them.
Latency on this CPU is reported but says nothing about the engine's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DEFAULT_MODELS = ("random:clip-tiny", "random:sam-tiny", "random:blip-tiny", "random:blip2-tiny", "random:llava-tiny")


def model_name(model: str) -> str:
    return model.split(":", 1)[-1].replace("/", "-")


def measure(model: str, out: Path, work: Path, runs: int, rounds: int, threads: int, command: str) -> dict:
    """Export, quantize with every TensorRT recipe of the family, check, plan and bench one model."""
    from edgevfm.export.api import export
    from edgevfm.export.checkpoint import load_checkpoint
    from edgevfm.quantize.api import quantize
    from edgevfm.quantize.check import check_bundle, summary
    from edgevfm.runtime import open_bundle
    from edgevfm.runtime.engines import plan

    from .api import bench
    from .families import BENCH
    from .scene_data import calibration_set, scene_trained

    family = load_checkpoint(model).spec.name
    family_bench = BENCH.get(family)
    folder = work / model_name(model)
    fp32 = export(model, folder / "fp32", force=True, **family_bench.tensorrt_export)
    calib = None
    if scene_trained(model):  # calibrated on scenes of its training split, as the demo does
        calib = calibration_set(family, work / "scenes", open_bundle(fp32, verify_hashes=False).manifest.get("task"))
    bundles = {recipe: quantize(fp32, recipe, folder / recipe, calib=calib, force=True)
               for recipe in family_bench.tensorrt_recipes}
    checks, plans = {}, {}
    for recipe, bundle in bundles.items():
        findings = check_bundle(bundle)
        checks[recipe] = {"summary": summary(findings), "findings": [f.line() for f in findings]}
        plans[recipe] = {name: part["profiles"] for name, part in plan(bundle, "tensorrt-10.3")["parts"].items()}
    report_dir = out / model_name(model)
    results = bench([fp32, *bundles.values()], model, report_dir, threads=threads, runs=runs, rounds=rounds,
                    command=command)
    (report_dir / "tensorrt.json").write_text(json.dumps({"model": model, "checks": checks, "profiles": plans},
                                                          indent=2) + "\n")
    (report_dir / "tensorrt.md").write_text(tensorrt_page(model, checks, plans, command))
    return {"model": model, "family": family, "report": str(report_dir / "report.md"), "checks": checks,
            "rows": [row["name"] for row in results["rows"]]}


def tensorrt_page(model: str, checks: dict, plans: dict, command: str) -> str:
    lines = [f"# {model}: TensorRT checks and engine plans", "", f"Produced by `{command}`.", "",
             "Accuracy and latency of each bundle (numerics simulated on the CPU): [report.md](report.md).", "",
             "## edgevfm check", "", "| bundle | " + " | ".join(next(iter(checks.values()))["summary"]) + " |",
             "|---|" + "---|" * len(next(iter(checks.values()))["summary"])]
    for recipe, found in checks.items():
        cells = [("passes" if c["errors"] == 0 else f"fails ({c['errors']} errors)")
                 + (f", {c['warnings']} warnings" if c["warnings"] else "") for c in found["summary"].values()]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    notes = sorted({line for found in checks.values() for line in found["findings"]})
    if notes:
        lines += ["", "Findings:", "", *[f"- {line}" for line in notes]]
    lines += ["", "## Engine profiles (min / opt / max, `edgevfm engines --target tensorrt-10.3`)", ""]
    for recipe, parts in plans.items():
        for part, profile in parts.items():
            shapes = "; ".join(f"{name} {' / '.join('x'.join(map(str, s)) for s in sizes)}"
                               for name, sizes in profile.items()) or "static shapes"
            lines.append(f"- {recipe} `{part}`: {shapes}")
    return "\n".join(lines) + "\n"


def index(out: Path, measured: list[dict], command: str) -> None:
    lines = ["# TensorRT-format bundles, simulated on the CPU", "", f"Produced by `{command}`.", "",
             "Each model's bundles are benchmarked against FP32 PyTorch with their numerics simulated on ONNX "
             "Runtime's CPU provider (Q/DQ unfused: what an engine computes), and checked against onnx-tensorrt's "
             "operator tables for TensorRT 10.3 (JetPack 6) and 10.15.", ""]
    for found in measured:
        name = model_name(found["model"])
        verdicts = {recipe: all(c["errors"] == 0 for c in check["summary"].values())
                    for recipe, check in found["checks"].items()}
        lines.append(f"- [{found['model']}]({name}/report.md) ({found['family']}; [checks and engine plans]"
                     f"({name}/tensorrt.md)): " + ", ".join(f"{r} {'passes' if ok else 'fails'}"
                                                            for r, ok in verdicts.items()))
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.tensorrt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help=f"a model to measure (repeat; default {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    parser.add_argument("--work", type=Path, default=Path("demo-out/tensorrt"), help="where the bundles are written")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    command = "python -m edgevfm.benchmarks.tensorrt " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.output.mkdir(parents=True, exist_ok=True)
    measured = [measure(m, args.output, args.work, args.runs, args.rounds, args.threads, command)
                for m in args.model or DEFAULT_MODELS]
    previous = args.output / "index.json"
    known = {m["model"]: m for m in json.loads(previous.read_text())} if previous.exists() else {}
    known.update({m["model"]: m for m in measured})
    previous.write_text(json.dumps(list(known.values()), indent=2) + "\n")
    index(args.output, list(known.values()), "python -m edgevfm.benchmarks.tensorrt --model MODEL ... -o "
          + str(args.output))
    for found in measured:
        print(f"wrote {found['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

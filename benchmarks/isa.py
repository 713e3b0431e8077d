"""``python -m edgevfm.benchmarks.isa``: each INT8 recipe's accuracy on this CPU and on an
AVX2-only one (no VNNI), where 8-bit dot products saturate (:mod:`edgevfm.runtime.cpu`).

The AVX2 side runs the same bundles under QEMU's user-mode emulator with its Haswell model (AVX2
and FMA, no AVX-512, no VNNI), which executes the runtime's integer kernels instruction for
instruction: on random:clip-tiny it gives the cosines an AVX2-only machine measured, to the digit.
Latency under emulation means nothing, so this tool measures accuracy only, with each family's
benchmark workload and floors (the ones ``--recipe auto`` holds candidates to).

    python -m edgevfm.benchmarks.isa --model random:clip-tiny -o int8-isa/clip-tiny
    python -m edgevfm.benchmarks.isa --model random:clip-vit-b32 --images 8 -o benchmarks/reports/int8-isa/clip-vit-b32

``--model`` exports the model and quantizes it with every INT8 recipe of its family, plus the
full-range controls (``*-u8s8``, ``ov-int8-plain-full-range``: what edgevfm wrote before, and what
the safe recipes avoid); or pass ready bundles: ``FP32 BUNDLE...``.

A preset trained on the generated scenes (``trained:*``) is judged on its task instead, as its
bench report judges it: its bundles calibrate on the training split's scenes, each row's task
scores on held-out scenes (``--scenes N``: the first N of the held-out split) are compared with
the FP32 bundle's on the same CPU, and the floors are the family's task goals:

    python -m edgevfm.benchmarks.isa --model trained:clip-shapes --scenes 100 -o benchmarks/reports/int8-isa/clip-shapes
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

EMULATED_CPU = "Haswell-v4"
CONTROLS = ("int8-dynamic-u8s8", "int8-static-u8s8", "ov-int8-plain-full-range")
# recipes (or steps of family plans) that multiply 8-bit activations by 8-bit weights
ACTIVATION_INT8 = ("int8-dynamic", "int8-static", "ov-int8", "ov-int8-bf16", "ov-int8-plain")


def measure(fp32: str, bundles: list[str], threads: int = 2, images: int | None = None,
            data: str | None = None) -> dict:
    """{isa, instruction_sets, rows: {bundle: the family's accuracy against the FP32 bundle}} on
    the CPU this process sees; ``images``: only the first of the workload's images; ``data``: the
    family's ground truth (held-out scenes), whose task scores each row has beside their drop below
    the FP32 bundle's (``fp32_task``)."""
    from edgevfm.runtime import cpu, load, open_bundle

    from .families import BENCH
    from .families.base import load_on_this_cpu

    bench = BENCH.get(open_bundle(fp32, verify_hashes=False).family)(data)
    if images:
        bench.images = bench.images[:images]
    reference = bench.outputs(bench.bundle_runner(load(fp32, threads=threads)))
    fp32_task = {k: v for k, v in bench.accuracy(reference, reference).items() if k in bench.task_keys}
    rows = {}
    for path in bundles:
        found = bench.accuracy(reference, bench.outputs(bench.bundle_runner(load_on_this_cpu(path, threads))))
        rows[path] = found | {f"{k} drop": v - found[k] for k, v in fp32_task.items()}
    return {"isa": cpu.isa_label(), "instruction_sets": list(cpu.instruction_sets()), "rows": rows,
            "fp32_task": fp32_task}


def measure_in(fp32: str, bundles: list[str], threads: int, emulated: bool, images: int | None = None,
               data: str | None = None) -> dict:
    """:func:`measure` in a child process, under QEMU's AVX2-only model with ``emulated``."""
    command = [sys.executable, "-m", "edgevfm.benchmarks.isa", "--worker", "--threads", str(threads), fp32, *bundles]
    command += ["--images", str(images)] if images else []
    command += ["--data", str(data)] if data else []
    if emulated:
        command = [shutil.which("qemu-x86_64"), "-cpu", EMULATED_CPU, *command]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measuring {'under QEMU' if emulated else 'here'} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def make_bundles(model: str, folder: Path) -> tuple[str, list[str]]:
    """``model`` exported, and quantized with its family's INT8 recipes and the full-range controls."""
    from edgevfm.export.api import export
    from edgevfm.quantize.api import quantize
    from edgevfm.quantize.recipes import RECIPES, recipes_for
    from edgevfm.runtime.errors import EdgeVfmError

    from .scene_data import calibration_set, scene_trained

    fp32 = export(model, folder / "fp32", force=True)
    manifest = json.loads((fp32 / "manifest.json").read_text())
    family = manifest["family"]
    # a preset trained on the scenes calibrates on its training split, as make demo and make report do
    calib = calibration_set(family, folder / "scenes", manifest.get("task")) if scene_trained(model) else None
    names = [r for r in recipes_for(family)
             if ({r} | set((RECIPES.get(r).plan or {}).values())) & set(ACTIVATION_INT8)] + list(CONTROLS)
    made = []
    for name in names:
        print(f"quantize --recipe {name}", file=sys.stderr)
        try:
            made.append(str(quantize(fp32, name, folder / name, calib=calib, force=True)))
        except EdgeVfmError as exc:  # e.g. OpenVINO on a builder graph: not a bundle this model has
            print(f"  skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
    return str(fp32), made


def report(results: dict, command: str) -> str:
    """Markdown: per bundle, each floor metric here and under emulation, and whether it holds."""
    from .auto import passes, quality

    from .families import BENCH

    bench = BENCH.get(results["family"])(None)
    sides = [s for s in ("native", "emulated") if s in results]
    task = [k for k in bench.task_keys if k in results[sides[0]].get("fp32_task", {})]
    goals = {k: bench.task_goals[k] for k in task if k in bench.task_goals}
    if goals:  # a preset trained on the scenes: judged on its task goals, as its bench report judges it
        keys = [w for k in task for w in (k, f"{k} drop")]
        fp32 = "; ".join(f"{s} " + ", ".join(f"{k} {results[s]['fp32_task'][k]:.4f}" for k in task) for s in sides)
        judged = (f"Each row's task scores on {results['data']}, and their drop below the FP32 bundle's on the same "
                  f"CPU (FP32: {fp32}). Floor: the family's task goals, as its bench report states them ("
                  + ", ".join(f"{k} drop <= {most}" for k, most in goals.items()) + ").")
        holds = lambda row: all(row[f"{k} drop"] <= most + 1e-12 for k, most in goals.items())
    else:
        floors = bench.auto_floor
        keys = list(bench.cosine_keys) + list(bench.agreement_keys)
        judged = ("Each row's accuracy against the FP32 bundle on the family's benchmark workload. Floors: the "
                  f"family's `--recipe auto` floors ({', '.join(f'{k} {v}' for k, v in floors.items() if v is not None)}).")
        holds = lambda row: passes(quality(bench, row), floors)
    lines = [f"# INT8 on every x86 CPU: {results['family']} ({results['model']})", "",
             f"Produced by `{command}` on {results['created']}.", "",
             "Measured on this machine's CPU and on an AVX2-only one (QEMU's Haswell model: no AVX-512, no VNNI; "
             "integer results as the hardware's, latency not measured). " + judged, ""]
    for side in sides:
        lines.append(f"- {side}: {results[side]['isa']} ({', '.join(results[side]['instruction_sets'])})")
    header = ["bundle", "recipe", "INT8 arithmetic"] + [f"{k} ({s})" for k in keys for s in sides] + \
             [f"floor ({s})" for s in sides]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, recipe, kind in results["bundles"]:
        cells = [Path(path).name, recipe, kind]
        for key in keys:
            cells += [_fmt(results[s]["rows"][path].get(key)) for s in sides]
        for side in sides:
            cells.append("holds" if holds(results[side]["rows"][path]) else "**below**")
        lines.append("| " + " | ".join(cells) + " |")
    if "made_by" in results:
        lines += ["", "The bundles were made by:", ""] + [f"- {line}" for line in results.get("made_by", [])]
    if "emulated" not in results:
        lines += ["", f"The AVX2-only side was not measured: {results['why_not_emulated']}."]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.5f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.isa", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", metavar="FP32 BUNDLE", help="the FP32 bundle, then the INT8 bundles")
    parser.add_argument("--model", help="export this and quantize it with every INT8 recipe and control instead")
    parser.add_argument("-o", "--output", type=Path, help="folder for report.md and results.json (and --model's bundles)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, help="only the first N images of the family's workload (the "
                        "emulated CPU runs some 100 times slower than this one)")
    parser.add_argument("--scenes", type=int, help="a preset trained on the scenes: its task scores on the first N "
                        "held-out scenes (default: as many as its bench report takes)")
    parser.add_argument("--data", help=argparse.SUPPRESS)  # the worker's: the held-out scenes, written once
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.bundles[0], args.bundles[1:], args.threads, args.images, args.data)))
        return 0
    if bool(args.model) == bool(args.bundles) or (args.model and not args.output):
        parser.error("pass --model MODEL -o DIR, or FP32 BUNDLE... (with -o DIR to keep the report)")
    from datetime import datetime, timezone

    import tempfile

    from edgevfm.runtime import open_bundle

    from .scene_data import data_for, scene_trained, write
    from .scenes import HELD_OUT_SEED

    fp32, bundles = make_bundles(args.model, args.output / "bundles") if args.model else (args.bundles[0], args.bundles[1:])
    opened = {b: open_bundle(b, verify_hashes=False).manifest for b in bundles}
    source = open_bundle(fp32, verify_hashes=False).manifest
    results = {"family": source["family"], "model": args.model or source["source"]["id"],
               "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "bundles": [(b, (m.get("recipe") or {}).get("name"), ", ".join(sorted(
                   {p.get("int8_activations", "—") for p in m["parts"].values()}))) for b, m in opened.items()]}
    if not args.model:  # ready bundles: say how they were made, so that anyone can make them again
        from .tool import made_by

        results["made_by"] = [made_by(open_bundle(fp32, verify_hashes=False).manifest)] + [
            made_by(m) for m in opened.values()]
    data, scratch = None, tempfile.TemporaryDirectory(prefix="edgevfm-isa-")
    if scene_trained(results["model"]):  # judged on its task: held-out scenes, written once for both sides
        kind, count = data_for(source["family"], source.get("task"))
        count = min(count, args.scenes or count)
        data = write(kind, Path(scratch.name) / "scenes", count, HELD_OUT_SEED)
        results["data"] = (f"the first {count} held-out scenes (`edgevfm scenes DIR --kind {kind} --count {count} "
                           f"--seed {HELD_OUT_SEED}`)")
    print("measure here", file=sys.stderr)
    results["native"] = measure_in(fp32, bundles, args.threads, emulated=False, images=args.images, data=data)
    if shutil.which("qemu-x86_64") and platform.machine() == "x86_64":
        print(f"measure on an AVX2-only CPU (QEMU {EMULATED_CPU}; slow)", file=sys.stderr)
        results["emulated"] = measure_in(fp32, bundles, args.threads, emulated=True, images=args.images, data=data)
    else:
        results["why_not_emulated"] = "qemu-x86_64 is not installed (apt-get install qemu-user) or this is not x86-64"
    command = "python -m edgevfm.benchmarks.isa " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, command)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        results["bundles"] = [(Path(b).name, r, k) for b, r, k in results["bundles"]]
        for side in ("native", "emulated"):
            if side in results:
                results[side]["rows"] = {Path(b).name: v for b, v in results[side]["rows"].items()}
        (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.output / "report.md").write_text(text)
        if args.model:
            shutil.rmtree(args.output / "bundles")
    scratch.cleanup()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

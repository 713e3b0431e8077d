"""``--recipe auto``: measure the family's recipes of every backend on this machine and keep the
fastest whose accuracy against the FP32 bundle stays within the floors.

Each candidate (the FP32 bundle itself, and every recipe of the family whose backend is installed)
is written to a temporary folder (or taken ready-made, ``prebuilt``), loaded, and measured on the family benchmark's own workload
(:mod:`.families`): its outputs against the FP32 bundle's (the family's
``cosine_keys``, the lowest of them, and ``agreement_keys``, whose lowest gives the drop
``1 - agreement``), and its latency, the sum over the family's parts of the median per call at
batch 1, timed in interleaved rounds (A B C, A B C, ...) so that a busy moment of a shared machine
hurts every candidate alike. The FP32 bundle always passes, so there is always a winner. The
written bundle's manifest records every candidate's figures and why the winner won.

It is a measurement, so it lives with the benchmarks (which may import the recipes), not in
:mod:`edgevfm.quantize` (which must not import the benchmarks); ``edgevfm quantize --recipe auto``
reaches it through the command line.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevfm.runtime.progress import progress
from edgevfm.quantize.api import quantize
from edgevfm.quantize.recipes import KEEP, RECIPES, recipes_for
from edgevfm.runtime import load
from edgevfm.runtime.bundle import open_bundle, write_manifest
from edgevfm.runtime.errors import EdgeVfmError, MissingExtraError, UsageError
from edgevfm.runtime.output import check_out_dir, staged_bundle
from edgevfm.runtime.pipeline import saturating_parts

from .families import BENCH
from .machine import machine_info
from .scene_data import held_out, scene_trained
from .timing import runs_per_round

BACKEND_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def floors_for(bench, family: str, min_cosine: float | None, max_drop: float | None,
               max_task_drop: float | None = None) -> dict[str, float | None]:
    """The floors: the user's, else the family's defaults (``bench.auto_floor``)."""
    floors = dict(bench.auto_floor)
    if max_task_drop is not None:
        if not bench.task_keys:
            raise UsageError(f"--max-task-drop: the {family} benchmark has no task metric yet")
        if not 0 <= max_task_drop < 1:
            raise UsageError(f"--max-task-drop must be in [0, 1), found {max_task_drop!r} (0.01: one point of top-1)")
        # the task score is what a user loses: agreement with FP32 counts only where asked for too
        floors = {"min_cosine": None, "max_drop": None, "max_task_drop": max_task_drop}
    if min_cosine is not None:
        if not bench.cosine_keys:
            raise UsageError(f"--min-cosine: a {family} bundle has no embedding to compare by cosine; its "
                             f"floor is --max-drop (1 - {' / '.join(bench.agreement_keys)})")
        if not 0 < min_cosine <= 1:
            raise UsageError(f"--min-cosine must be in (0, 1], found {min_cosine!r}")
        floors["min_cosine"] = min_cosine
    if max_drop is not None:
        if not 0 <= max_drop < 1:
            raise UsageError(f"--max-drop must be in [0, 1), found {max_drop!r} (0.02: at most 2 points of agreement)")
        floors["max_drop"] = max_drop
    return floors


def quality(bench, accuracy: dict) -> dict[str, float | None]:
    """The candidate's lowest cosine (None without embeddings), its agreement drop, and its largest
    task-score drop below FP32 PyTorch where the row has them (None otherwise)."""
    cosines = [accuracy[k] for k in bench.cosine_keys if accuracy.get(k) is not None]
    agreements = [accuracy[k] for k in bench.agreement_keys if accuracy.get(k) is not None]
    drops = [accuracy[f"{k} drop"] for k in bench.task_keys if accuracy.get(f"{k} drop") is not None]
    return {"cosine": min(cosines) if cosines else None, "drop": 1 - min(agreements) if agreements else 0.0,
            "task_drop": max(drops) if drops else None}


def task_drop(bench, fp32: dict, accuracy: dict) -> float | None:
    """The largest drop of the candidate's task scores (``bench.task_keys``) below the FP32 bundle's."""
    drops = [fp32[k] - accuracy[k] for k in bench.task_keys if k in fp32 and k in accuracy]
    return max(drops) if drops else None


def passes(found: dict, floors: dict) -> bool:
    cosine_ok = floors.get("min_cosine") is None or found["cosine"] is None or found["cosine"] >= floors["min_cosine"]
    task_ok = floors.get("max_task_drop") is None or (found.get("task_drop") or 0.0) <= floors["max_task_drop"] + 1e-12
    drop_ok = floors.get("max_drop") is None or found["drop"] <= floors["max_drop"] + 1e-12
    return cosine_ok and task_ok and drop_ok


def _installed(backend: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(BACKEND_MODULES.get(b, b)) is not None for b in backend.split("/"))


def quantize_auto(bundle: str | Path, out: str | Path, candidates: list[str] | None = None,
                  min_cosine: float | None = None, max_drop: float | None = None, calib=None,
                  samples: int | None = None, force: bool = False, block_size: int | None = None, threads: int = 2,
                  runs: int = 3, rounds: int = 3, show_progress: bool = True,
                  prebuilt: dict[str, Path] | None = None, reuse: str | Path | None = None,
                  data: str | Path | None = None, max_task_drop: float | None = None) -> Path:
    """Write to ``out`` the candidate that measured fastest within the floors (see the module).
    ``prebuilt``: {recipe: a bundle that recipe already made from ``bundle``}, measured instead of
    being written again (the demo has them all); ``reuse``: a folder of such bundles, one per
    recipe, named after it (as ``edgevfm demo`` writes them in demo-out/MODEL)."""
    out = Path(out)
    if reuse is not None:
        prebuilt = {**prebuilt_in(reuse, bundle), **(prebuilt or {})}
    check_out_dir(out, force, inputs=[bundle])
    source = open_bundle(bundle)
    floors = floors_for(BENCH.get(source.family), source.family, min_cosine, max_drop, max_task_drop)
    if data is None and max_task_drop is not None:
        reference = source.manifest["source"].get("id", "")
        if not scene_trained(reference):
            raise UsageError(f"--max-task-drop needs --data (a data set with ground truth; edgevfm scenes writes "
                             f"one): {reference!r} is not a preset trained on the scenes, whose held-out split is the default")
        data = held_out(source.family, task=source.manifest.get("task"))
    bench = BENCH.get(source.family)(str(data) if data is not None else None)
    bench.check_bundles([source])
    names = candidates or [KEEP] + [r for r in recipes_for(source.family)]
    unknown = [n for n in names if n != KEEP and n not in recipes_for(source.family)]
    if unknown:
        raise UsageError(f"unknown candidate recipes {unknown}: pick among {', '.join([KEEP] + recipes_for(source.family))}")
    records: dict[str, dict] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.auto-", dir=out.parent) as scratch:
        written = {KEEP: source.path}
        for name in progress([n for n in names if n != KEEP], desc="auto: write candidates", enabled=show_progress):
            recipe = RECIPES.get(name)
            if name in (prebuilt or {}):
                made = _checked_prebuilt(prebuilt[name], name, source)
                saturating = saturating_parts(open_bundle(made, verify_hashes=False))
                if saturating:  # a bundle of an older edgevfm: not safe on this CPU, so no candidate
                    records[name] = {"recipe": name, "backend": recipe.backend, "skipped":
                                     f"parts {sorted(saturating)} hold full-range INT8, which saturates on this CPU"}
                    continue
                written[name] = made
                records[name] = {"reused": str(prebuilt[name])}
                continue
            if not _installed(recipe.backend):
                records[name] = {"recipe": name, "backend": recipe.backend, "skipped": f"{recipe.backend} is not installed"}
                continue
            try:
                written[name] = quantize(source.path, name, Path(scratch) / name, calib=calib, samples=samples,
                                         block_size=block_size, show_progress=False)
            except (MissingExtraError, EdgeVfmError) as exc:  # e.g. a builder graph on OpenVINO: not a candidate
                records[name] = {"recipe": name, "backend": recipe.backend, "skipped": str(exc).splitlines()[0]}
        measured = _measure(bench, written, threads, runs, rounds, show_progress)
        for name, figures in measured.items():
            found = quality(bench, figures["accuracy"])
            if data is not None:
                found["task_drop"] = task_drop(bench, measured[KEEP]["accuracy"], figures["accuracy"])
            backend = "onnxruntime" if name == KEEP else RECIPES.get(name).backend
            records[name] = dict(recipe=name, backend=backend, **found, passed=passes(found, floors), **figures,
                                 **records.get(name, {}))  # "reused": the prebuilt bundle measured
        winner = min((r for r in records.values() if r.get("passed")), key=lambda r: r["latency_ms"])
        record = _record(records, winner, floors, threads, runs, rounds, machine_info(threads))
        record["data"] = None if data is None else str(data)  # what the task scores were measured on
        with staged_bundle(out, force=force, inputs=[bundle]) as stage:
            chosen = open_bundle(written[winner["recipe"]], verify_hashes=False)
            manifest = {k: v for k, v in chosen.manifest.items() if k not in ("files", "format_version")}
            for relative in chosen.manifest["files"]:
                (stage / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(chosen.file(relative), stage / relative)
            settings = dict(manifest.get("recipe") or {"name": KEEP, "parts": {}})
            manifest["recipe"] = {"name": "auto", "chosen": settings.pop("name"), **settings, "auto": record}
            write_manifest(stage, manifest)
    return out


def prebuilt_in(folder: str | Path, bundle: str | Path) -> dict[str, Path]:
    """{recipe: folder/recipe} for the family's recipes that have a bundle in ``folder`` (each is
    checked to be that recipe's, made from ``bundle``, before it is measured)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--reuse expects a folder of bundles named after their recipes, found {str(folder)!r}: "
                         "pass the folder edgevfm demo wrote a model's bundles in (demo-out/MODEL)")
    return {name: folder / name for name in recipes_for(open_bundle(bundle).family) if (folder / name).is_dir()}


def _checked_prebuilt(path: Path, recipe: str, source) -> Path:
    made = open_bundle(path)
    found = (made.manifest.get("recipe") or {}).get("name")
    if found != recipe or made.manifest["source"] != source.manifest["source"]:
        raise UsageError(f"prebuilt candidate {str(path)!r} is not {recipe!r} of {source.path}: it was made by "
                         f"{found!r} from {made.manifest['source'].get('id')!r}")
    return made.path


def _measure(bench, written: dict[str, Path], threads: int, runs: int, rounds: int, show_progress: bool) -> dict:
    """{candidate: accuracy against the FP32 bundle, latency (sum of per-part medians), per-part
    medians and the spread between rounds}. One candidate is loaded at a time (SAM ViT-B's
    candidates together would not fit in memory); each load is warmed up before it is timed."""
    outputs: dict[str, dict] = {}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in written}
    per_round: dict[str, list[float]] = {name: [] for name in written}
    steps = [(r, name) for r in range(rounds) for name in written]  # A B C, A B C, ...
    # parts that take seconds per call (SAM ViT-B's encoder): the benchmark's cap, over all rounds
    caps = {part: runs_per_round(cap, rounds) for part, cap in bench.max_runs.items()}
    for r, name in progress(steps, desc=f"auto: measure ({rounds} interleaved rounds)", enabled=show_progress):
        runner = bench.bundle_runner(load(written[name], threads=threads))
        if r == 0:
            outputs[name] = bench.outputs(runner)
        round_total = 0.0
        for part, call in bench.calls(runner, 1)[0].items():
            call()  # warm-up: first calls compile and allocate
            found = []
            for _ in range(min(runs, caps.get(part, runs))):
                start = time.perf_counter()
                call()
                found.append((time.perf_counter() - start) * 1e3)
            times[name].setdefault(part, []).extend(found)
            round_total += float(np.median(found))
        per_round[name].append(round_total)
        del runner
    result = {}
    for name in written:
        parts = {part: float(np.median(t)) for part, t in times[name].items()}
        total = sum(parts.values())
        result[name] = {"accuracy": bench.accuracy(outputs[KEEP], outputs[name]), "latency_ms": total,
                        "parts_ms": parts,
                        "spread": float((max(per_round[name]) - min(per_round[name])) / total) if total else 0.0}
    return result


def _record(records: dict, winner: dict, floors: dict, threads: int, runs: int, rounds: int, machine: dict) -> dict:
    """What the manifest keeps: every candidate's figures, the floors, the machine and the reason."""
    ranked = sorted((r for r in records.values() if "latency_ms" in r), key=lambda r: r["latency_ms"])
    faster = [r for r in ranked if r["latency_ms"] < winner["latency_ms"]]
    why = (f"fastest of {sum(r['passed'] for r in ranked)} candidates within the floors "
           f"({floor_text(floors)}): {winner['latency_ms']:.2f} ms")
    if faster:
        why += "; faster but outside the floors: " + ", ".join(
            f"{r['recipe']} {r['latency_ms']:.2f} ms ({quality_text(r)})" for r in faster)
    return {"chosen": winner["recipe"], "why": why, "floors": floors,
            "measured": {"threads": threads, "runs_per_round": runs, "rounds": rounds, "latency":
                         "sum over the family's parts of the median ms per call at batch 1",
                         "cpu": machine["cpu"], "isa": machine["isa"], "instruction_sets": machine["instruction_sets"]},
            "candidates": [{k: v for k, v in r.items() if k != "accuracy"} | ({"accuracy": r["accuracy"]}
                                                                              if "accuracy" in r else {})
                           for r in ranked + [r for r in records.values() if "skipped" in r]]}


def floor_text(floors: dict) -> str:
    words = [f"drop <= {floors['max_drop']:.3f}"] if floors.get("max_drop") is not None else []
    if floors.get("max_task_drop") is not None:
        words.append(f"task drop <= {floors['max_task_drop']:.3f}")
    if floors.get("min_cosine") is not None:
        words.insert(0, f"cosine >= {floors['min_cosine']:.4f}")
    return ", ".join(words)


def quality_text(r: dict) -> str:
    words = [f"drop {r['drop']:.3f}"]
    if r.get("task_drop") is not None:
        words.append(f"task drop {r['task_drop']:.3f}")
    if r.get("cosine") is not None:
        words.insert(0, f"cosine {r['cosine']:.4f}")
    return ", ".join(words)

"""``bench``: the PyTorch FP32 reference and each bundle, measured on the same inputs, each row in
its own process; results to JSON (schema :data:`SCHEMA`) and to a Markdown / HTML report."""

from __future__ import annotations

import datetime
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgevfm.runtime.progress import progress
from edgevfm.runtime.bundle import open_bundle
from edgevfm.runtime.errors import BundleError, InputError

from .auto import floor_text, passes, quality, quality_text
from .families import BENCH
from . import machine
from .machine import busy_cores, machine_info
from .report import write_report
from .roofline import machine_peaks
from .scene_data import held_out, held_out_command, scene_trained
from .timing import pooled
from .worker import measure_peers, measure_row

SCHEMA = "edgevfm.bench/1"


def bench(bundles: list[str | Path], reference: str, out_dir: str | Path, data: str | Path | None = None,
          threads: int = 2, runs: int = 30, warmup: int | None = None, batch: int = 8,
          command: str | None = None, show_progress: bool = True, rounds: int = 1, quick: bool = False) -> dict:
    """Measure ``bundles`` against ``reference`` (the checkpoint they were exported from).

    Every row reports load time, first-call time, per-part latency (p50/p90/p99 over ``runs``
    after ``warmup``), throughput at ``batch``, peak memory and size; bundle rows add accuracy
    against the reference. The runs are split over ``rounds`` interleaved rounds (every row once,
    then every row again, ...; each row in a fresh process each time), so that a busy minute of a
    shared machine slows every row alike; the report gives each part's spread between rounds and
    the load average before and after, and flags a busy machine. ``quick`` (edgevfm demo) shortens
    the family's workload (:meth:`Bench.quicken`: SAM's automatic-mask recall, LLaVA's image
    prompts); the report's settings and workload say so. Returns the results dict, with ``report`` naming the Markdown file.
    """
    if not bundles:
        raise InputError("no bundles given: pass at least one bundle folder")
    if runs < 1 or threads < 1 or batch < 1 or rounds < 1:
        raise InputError(f"runs, threads, batch and rounds must be at least 1, found {runs}, {threads}, {batch}, "
                         f"{rounds}")
    rounds = min(rounds, runs)
    opened = [open_bundle(b) for b in bundles]
    families = sorted({b.family for b in opened})
    if len(families) != 1:
        raise InputError(f"bundles of one family per report, found {families}: run bench once per family")
    family = families[0]
    _check_reference(opened, reference)
    given_data = data  # the command to rerun names only what the user passed
    made_by = None
    if data is None and scene_trained(reference):  # judged on task accuracy: its held-out scenes
        task = opened[0].manifest.get("task")
        data = held_out(family, task=task)
        made_by = held_out_command(family, task)
    family_bench = BENCH.get(family)(str(data) if data else None)
    if quick:
        family_bench.quicken()
    family_bench.check_bundles(opened)
    base = {"family": family, "data": str(data) if data else None, "data_made_by": made_by, "threads": threads, "runs": runs,
            "warmup": warmup if warmup is not None else max(3, runs // 5), "batch": batch, "rounds": rounds,
            **({"quick": True} if quick else {})}
    tasks = [dict(base, kind="pytorch", target=reference)] + [dict(base, kind="bundle", target=str(b.path)) for b in opened]
    load_before, busy_before = os.getloadavg(), busy_cores()
    peaks = machine_peaks(threads)
    context = multiprocessing.get_context("spawn")
    per_round = -(-runs // rounds)
    measured: list[list[dict]] = [[] for _ in tasks]
    steps = [(r, i) for r in range(rounds) for i in range(len(tasks))]  # A B C, A B C, ...
    for r, i in progress(steps, desc=f"bench {family} ({rounds} interleaved rounds)", enabled=show_progress):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            measured[i].append(pool.submit(measure_row, dict(tasks[i], runs=per_round, outputs=r == 0)).result())
    rows = [_pooled_row(found) for found in measured]
    peers = {}
    if family_bench.measures_peers:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            peers = pool.submit(measure_peers, dict(base, target=reference)).result()
    reference_row = rows[0]
    for row in rows[1:]:
        if row["config_sha256"] != reference_row["config_sha256"]:
            raise BundleError(row["path"], [f"was exported from a checkpoint whose config differs from --reference "
                                            f"{reference!r}: pass the checkpoint the bundle came from"])
    for row in rows:
        row["accuracy"] = family_bench.accuracy(reference_row["outputs"], row["outputs"])
    fp32_task = {k: reference_row["accuracy"][k] for k in family_bench.task_keys if k in reference_row["accuracy"]}
    for row in rows:
        row["accuracy"].update({f"{k} drop": v - row["accuracy"][k] for k, v in fp32_task.items()})
    for row in rows:
        del row["outputs"]
    machine = dict(machine_info(threads), measured_peaks=peaks)
    results = {
        "schema": SCHEMA,
        "command": command or _command(bundles, reference, given_data, threads, runs, batch, out_dir, rounds),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": family,
        "reference": reference,
        "settings": base,
        "workload": family_bench.workload(),
        "machine": machine,
        "load_average": load_record(load_before, os.getloadavg(), busy_before, busy_cores()),
        "rows": rows,
        "peers": peers,
        "goals": (family_bench.goals(rows, peaks, peers, machine)
                  + backend_goals(family_bench, rows, machine["instruction_sets"]) + task_goals(family_bench, rows)),
    }
    results["report"] = str(write_report(results, Path(out_dir)))
    return results


# other work that flags a report as taken on a busy machine: half a core or more, sampled while the
# bench sleeps just before and just after measuring
BUSY_CORES = 0.5


def load_record(before: tuple, after: tuple, busy_before: float | None, busy_after: float | None) -> dict:
    """The load average (1, 5, 15 minutes) and the cores other work kept busy (a sample of
    ``machine.BUSY_SAMPLE_SECONDS``), before and after, and whether the machine was busy."""
    busy = any(b is not None and b >= BUSY_CORES for b in (busy_before, busy_after))
    return {"before": [round(x, 2) for x in before], "after": [round(x, 2) for x in after],
            "busy_cores_before": busy_before, "busy_cores_after": busy_after, "busy": bool(busy),
            "rule": f"busy when other work kept {BUSY_CORES} cores or more busy in a {machine.BUSY_SAMPLE_SECONDS:g}-second "
                    "sample taken with the bench idle, just before or just after measuring (the load average also "
                    "counts this process's own work of the last minutes)"}


def _pooled_row(rounds: list[dict]) -> dict:
    """One row measured in several rounds: the first round's row (load, first call, outputs),
    latency pooled over every round, the highest peak memory, the median throughput."""
    row = dict(rounds[0])
    row["latency_ms"] = {part: pooled([r["latency_ms"][part] for r in rounds]) for part in row["latency_ms"]}
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    row["first_part_peak_rss_mb"] = max(r["first_part_peak_rss_mb"] for r in rounds)
    speeds = sorted(r["throughput"]["items_per_s"] for r in rounds)
    row["throughput"] = dict(row["throughput"], items_per_s=speeds[len(speeds) // 2])
    return row


def task_goals(family_bench, rows: list[dict]) -> list[dict]:
    """Each INT8 row's task scores (ground truth: --data, or a trained preset's held-out scenes)
    within the family's ``task_goals`` of FP32 PyTorch's."""
    verdicts = []
    for row in rows:
        if row["kind"] != "bundle" or "int8" not in row["precision"]:
            continue
        for key, most in family_bench.task_goals.items():
            drop = row["accuracy"].get(f"{key} drop")
            if drop is None:
                continue
            verdicts.append({"goal": f"{row['name']}: {key} at most {most:g} below FP32 PyTorch's",
                             "met": bool(drop <= most + 1e-12),
                             "measured": f"{row['accuracy'][key]:.4f} against {row['accuracy'][key] + drop:.4f}: "
                                         f"{drop:+.4f}"})
    return verdicts


def backend_goals(family_bench, rows: list[dict], flags: list[str]) -> list[dict]:
    """Goals every family shares once its OpenVINO rows are measured: edgevfm's ``ov-int8`` faster
    than plain NNCF within the family's accuracy floor, the ``auto`` bundle the fastest row within
    the floors it was chosen by (5% of room: two measurements of one bundle differ so), and the same
    rows on an AVX2-only CPU, where the fastest backend flips (``flags``: this CPU's instruction
    sets)."""
    bundles = {r["recipe"]: r for r in rows if r["kind"] == "bundle"}
    total = lambda r: sum(p["p50"] for p in r["latency_ms"].values())
    first = next(iter(rows[0]["latency_ms"]))
    verdicts = []
    ours, plain = bundles.get("ov-int8"), bundles.get("ov-int8-plain")
    if ours and plain:
        floor = family_bench.auto_floor
        found = quality(family_bench, ours["accuracy"])
        speedup = plain["latency_ms"][first]["p50"] / ours["latency_ms"][first]["p50"]
        verdicts.append({"goal": f"ov-int8 ({first}) faster than plain NNCF (nncf.quantize with its defaults), within "
                                 f"the family's floor ({floor_text(floor)})",
                         "met": bool(speedup > 1 and passes(found, floor)),
                         "measured": f"{speedup:.2f}x plain NNCF's speed ({ours['latency_ms'][first]['p50']:.1f} vs "
                                     f"{plain['latency_ms'][first]['p50']:.1f} ms); ov-int8 {quality_text(found)}, "
                                     f"plain NNCF {quality_text(quality(family_bench, plain['accuracy']))}"
                                     + _plain_difference(ours, plain, first, speedup)})
    if any("openvino" in r["backend"] for r in bundles.values()):
        wide = [f for f in flags if f.startswith("avx512")]
        avx2_only = "avx2" in flags and not wide
        verdicts.append({"goal": "the same rows on an AVX2-only CPU (OpenVINO's INT8 kernels lose most there: the "
                                 "fastest backend flips)",
                         "met": avx2_only,
                         "measured": "this report's CPU is AVX2-only: its rows are those" if avx2_only else
                                     f"nothing: this CPU has {', '.join(wide or flags) or 'no AVX2'}, so its rows "
                                     "are not the AVX2 ones; their latency comes from make report run on an AVX2-only "
                                     "CPU. Their INT8 accuracy is measured here under QEMU's AVX2 model by python -m "
                                     "edgevfm.benchmarks.isa (benchmarks/reports/int8-isa); an emulator's timings "
                                     "mean nothing"})
    auto = bundles.get("auto")
    if auto:
        floors = auto.get("auto_floors") or family_bench.auto_floor
        within = [r for r in bundles.values() if r is not auto and passes(quality(family_bench, r["accuracy"]), floors)]
        fastest = min(within or [auto], key=total)
        verdicts.append({"goal": f"the auto bundle (chose {auto.get('auto_chosen')}) is the fastest row within its floors "
                                 f"({floor_text(floors)}), sum of part p50s, within 5%",
                         "met": bool(total(auto) <= 1.05 * total(fastest)),
                         "measured": f"auto {total(auto):.1f} ms; fastest within the floors: {fastest['name']} "
                                     f"{total(fastest):.1f} ms ({len(within)} other rows within)"})
    return verdicts


# how OpenVINO names the operations a report lists
_OP_NAMES = {"MVN": "MVN (layer norm)", "Add": "Add (residual and bias additions)"}


def _plain_difference(ours: dict, plain: dict, part: str, speedup: float) -> str:
    """What plain NNCF quantizes that ov-int8 does not (operations fed a quantized activation, from
    both IRs), and what that bought it in speed against ov-int8."""
    mine, theirs = ((r.get("quantized_ops") or {}).get(part) for r in (ours, plain))
    if mine is None or theirs is None:
        return ""
    more = {kind: n - mine.get(kind, 0) for kind, n in theirs.items() if n > mine.get(kind, 0)}
    if not more:
        return ""
    listed = ", ".join(f"{n} {_OP_NAMES.get(kind, kind)}" for kind, n in sorted(more.items(), key=lambda kv: -kv[1]))
    effect = (f"that makes plain NNCF {1 / speedup:.2f}x as fast as ov-int8 at the accuracy above" if speedup < 0.95
              else "it buys plain NNCF no speed here (within 5%): both run the same INT8 Linear layers" if speedup <= 1.05
              else "ov-int8 is faster all the same")
    return (f"; plain NNCF also feeds {listed} a quantized input, which ov-int8 keeps in float for its accuracy "
            f"floor; {effect}")


def _check_reference(bundles, reference: str) -> None:
    """Refuse, before measuring anything, bundles that were not exported from ``reference``."""
    from edgevfm.export.checkpoint import reference_config_sha256

    expected = reference_config_sha256(reference)
    problems = [b for b in bundles if b.manifest["source"].get("config_sha256") != expected]
    if problems:
        raise BundleError(problems[0].path, [
            f"was exported from {problems[0].manifest['source'].get('id')!r}, whose config differs from "
            f"--reference {reference!r}: pass the checkpoint the bundle came from"])


def _command(bundles, reference, data, threads, runs, batch, out_dir, rounds) -> str:
    words = ["edgevfm", "bench", *map(str, bundles), "--reference", reference]
    if data:
        words += ["--data", str(data)]
    words += ["--threads", str(threads), "--runs", str(runs), "--rounds", str(rounds), "--batch", str(batch), "-o",
              str(out_dir)]
    return " ".join(words)

"""``bench``: the PyTorch FP32 reference and each bundle, measured on the same inputs, each row in
its own process; results to JSON (schema :data:`SCHEMA`) and to a Markdown / HTML report."""

from __future__ import annotations

import datetime
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgevfm.export.progress import progress
from edgevfm.runtime.bundle import open_bundle
from edgevfm.runtime.errors import BundleError, InputError

from .families import BENCH
from .machine import machine_info
from .report import write_report
from .roofline import gemm_peaks
from .worker import measure_peers, measure_row

SCHEMA = "edgevfm.bench/1"


def bench(bundles: list[str | Path], reference: str, out_dir: str | Path, data: str | Path | None = None,
          threads: int = 2, runs: int = 30, warmup: int | None = None, batch: int = 8,
          command: str | None = None, show_progress: bool = True) -> dict:
    """Measure ``bundles`` against ``reference`` (the checkpoint they were exported from).

    Every row reports load time, first-call time, per-part latency (p50/p90/p99 over ``runs``
    after ``warmup``), throughput at ``batch``, peak memory and size; bundle rows add accuracy
    against the reference. Returns the results dict, with ``report`` naming the Markdown file.
    """
    if not bundles:
        raise InputError("no bundles given: pass at least one bundle folder")
    if runs < 1 or threads < 1 or batch < 1:
        raise InputError(f"runs, threads and batch must be at least 1, found {runs}, {threads}, {batch}")
    opened = [open_bundle(b) for b in bundles]
    families = sorted({b.family for b in opened})
    if len(families) != 1:
        raise InputError(f"bundles of one family per report, found {families}: run bench once per family")
    family = families[0]
    _check_reference(opened, reference)
    family_bench = BENCH.get(family)(str(data) if data else None)
    if hasattr(family_bench, "check_bundles"):
        family_bench.check_bundles(opened)
    base = {"family": family, "data": str(data) if data else None, "threads": threads, "runs": runs,
            "warmup": warmup if warmup is not None else max(3, runs // 5), "batch": batch}
    tasks = [dict(base, kind="pytorch", target=reference)] + [dict(base, kind="bundle", target=str(b.path)) for b in opened]
    peaks = gemm_peaks(threads)
    rows = []
    context = multiprocessing.get_context("spawn")
    for task in progress(tasks, desc=f"bench {family}", enabled=show_progress):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            rows.append(pool.submit(measure_row, task).result())
    peers = {}
    if hasattr(family_bench, "peers"):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            peers = pool.submit(measure_peers, dict(base, target=reference)).result()
    family_bench.peer_results = peers
    reference_row = rows[0]
    for row in rows[1:]:
        if row["config_sha256"] != reference_row["config_sha256"]:
            raise BundleError(row["path"], [f"was exported from a checkpoint whose config differs from --reference "
                                            f"{reference!r}: pass the checkpoint the bundle came from"])
    for row in rows:
        row["accuracy"] = family_bench.accuracy(reference_row["outputs"], row["outputs"])
    for row in rows:
        del row["outputs"]
    results = {
        "schema": SCHEMA,
        "command": command or _command(bundles, reference, data, threads, runs, batch, out_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": family,
        "reference": reference,
        "settings": base,
        "workload": family_bench.workload(),
        "machine": dict(machine_info(threads), measured_peaks=peaks),
        "rows": rows,
        "peers": peers,
        "goals": family_bench.goals(rows, peaks),
    }
    results["report"] = str(write_report(results, Path(out_dir)))
    return results


def _check_reference(bundles, reference: str) -> None:
    """Refuse, before measuring anything, bundles that were not exported from ``reference``."""
    from edgevfm.export.checkpoint import reference_config_sha256

    expected = reference_config_sha256(reference)
    problems = [b for b in bundles if b.manifest["source"].get("config_sha256") != expected]
    if problems:
        raise BundleError(problems[0].path, [
            f"was exported from {problems[0].manifest['source'].get('id')!r}, whose config differs from "
            f"--reference {reference!r}: pass the checkpoint the bundle came from"])


def _command(bundles, reference, data, threads, runs, batch, out_dir) -> str:
    words = ["edgevfm", "bench", *map(str, bundles), "--reference", reference]
    if data:
        words += ["--data", str(data)]
    words += ["--threads", str(threads), "--runs", str(runs), "--batch", str(batch), "-o", str(out_dir)]
    return " ".join(words)

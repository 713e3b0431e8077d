"""Latency and memory measurement: warm-up, then percentiles over N timed runs."""

from __future__ import annotations

import resource
import sys
import time
from typing import Callable

import numpy as np


def latency(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    """Milliseconds per call of ``fn``: p50, p90, p99, mean, min over ``runs`` after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    stats = summary(times * 1e3)
    stats["warmup"] = warmup
    return stats


def summary(ms) -> dict:
    """Percentiles of a list of milliseconds, and the list itself (``times_ms``), so that rows
    measured in several rounds can be pooled."""
    ms = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min()),
            "runs": int(ms.size), "times_ms": [round(float(t), 4) for t in ms]}


def runs_per_round(cap: int, rounds: int) -> int:
    """A slow part's run cap (for all rounds together) spread over ``rounds``: at least one each."""
    return max(1, -(-cap // rounds))


def pooled(rounds: list[dict]) -> dict:
    """One part's latency over several rounds: percentiles of every run, and the ``spread``, how far
    the rounds' medians lie apart relative to the pooled median (0.05: the rounds agree within 5%)."""
    stats = summary([t for r in rounds for t in r["times_ms"]])
    medians = [r["p50"] for r in rounds]
    stats.update(warmup=rounds[0]["warmup"], rounds=len(rounds), round_p50=medians,
                 spread=float((max(medians) - min(medians)) / stats["p50"]) if stats["p50"] else 0.0)
    return stats


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``execve``, so a freshly spawned worker would
    report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6
    except OSError:  # pragma: no cover - not Linux
        return peak_rss_mb()

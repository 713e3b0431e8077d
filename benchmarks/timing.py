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
    ms = times * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min()),
            "runs": runs, "warmup": warmup}


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

"""The hardware and software a benchmark ran on, recorded in every report."""

from __future__ import annotations

import os
import platform
import time
from edgevfm.runtime.cpu import instruction_sets, isa_label
from edgevfm.runtime.versions import library_versions

LIBRARIES = ("edgevfm", "numpy", "onnxruntime", "onnx", "openvino", "nncf", "torch", "transformers", "tokenizers",
             "Pillow")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(threads: int | None = None) -> dict:
    cpu = _cpuinfo()
    libraries = library_versions(LIBRARIES)
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "instruction_sets": list(instruction_sets()),  # from CPUID: right under an emulator too
        "isa": isa_label(),  # what INT8 accuracy depends on (runtime/cpu.py)
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": libraries,
        "gpu": None,
    }


BUSY_SAMPLE_SECONDS = 2.0  # how long busy_cores watches by default (the test suite shortens it)


def busy_cores(seconds: float | None = None) -> float | None:
    """How many cores other work kept busy over ``seconds`` (default ``BUSY_SAMPLE_SECONDS``) while
    this process sleeps (from ``/proc/stat``; None elsewhere). Unlike the load average, it does not
    remember this process's own work of the last minutes (the demo quantizes just before it
    benchmarks)."""
    seconds = BUSY_SAMPLE_SECONDS if seconds is None else seconds

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values[:8]) - idle, sum(values[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round((busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1), 2)

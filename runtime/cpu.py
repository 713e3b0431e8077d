"""What this CPU does with 8-bit integer dot products, read from the processor itself.

x86 CPUs without VNNI (AVX2 laptops, AVX-512F without VNNI) multiply u8 activations by s8 weights
with ``VPMADDUBSW``, which adds each pair of products into 16 bits and saturates: an INT8 graph
whose weights use the full 8-bit range loses accuracy there (edgevfm's INT8 recipes avoid it:
ONNX Runtime's U8U8 kernels widen before they add, OpenVINO's overflow fix keeps weights in 7 bits).
VNNI (AVX-512 VNNI or AVX-VNNI) accumulates in 32 bits, and Arm's dot products widen: neither
saturates.

The flags come from CPUID through numpy (what the running process's libraries see, also under an
emulator such as QEMU), with ``/proc/cpuinfo`` only for AVX-VNNI, which numpy does not report.
"""

from __future__ import annotations

import functools
import os
import platform

# the instruction sets a report records, by their /proc/cpuinfo names
REPORTED = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
            "neon", "asimddp", "sve")
_NUMPY_NAMES = {"avx2": "AVX2", "fma": "FMA3", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI",
                "avx512_bf16": "AVX512BF16", "neon": "NEON", "asimddp": "ASIMDDP", "sve": "SVE"}
VNNI = ("avx512_vnni", "avx_vnni")
ONEDNN_SATURATING = ("SSE41", "AVX", "AVX2", "AVX512_CORE")  # ONEDNN_MAX_CPU_ISA values without VNNI
ONEDNN_WITHOUT_BF16 = ONEDNN_SATURATING + ("AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI")


def _proc_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _numpy_features() -> dict[str, bool] | None:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found
        except ImportError:
            return None
    return dict(found)


@functools.lru_cache(maxsize=1)
def instruction_sets() -> tuple[str, ...]:
    """The instruction sets of :data:`REPORTED` this process can use, sorted."""
    proc, features = _proc_flags(), _numpy_features()
    if features is None:  # no CPUID reading: trust the kernel's list
        return tuple(sorted(f for f in REPORTED if f in proc))
    found = {name for name, key in _NUMPY_NAMES.items() if features.get(key)}
    # /proc/cpuinfo describes the host even under an emulator: use it only where it agrees with CPUID
    if ("avx512f" in proc) == bool(features.get("AVX512F")) and ("avx2" in proc) == bool(features.get("AVX2")):
        found |= {f for f in REPORTED if f in proc and f not in _NUMPY_NAMES}
    return tuple(sorted(found))


def isa_label(flags: tuple[str, ...] | None = None) -> str:
    """A short name for the integer arithmetic the flags give: ``AVX-512 VNNI``, ``AVX-VNNI``,
    ``AVX-512 (no VNNI)``, ``AVX2 (no VNNI)``, ``Arm`` or ``x86 without AVX2``."""
    flags = instruction_sets() if flags is None else flags
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    if "avx512f" in flags:
        return "AVX-512 (no VNNI)"
    if "avx2" in flags:
        return "AVX2 (no VNNI)"
    return "Arm" if not is_x86() else "x86 without AVX2"


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def int8_saturates(backend: str = "onnxruntime") -> bool:
    """Whether 8-bit dot products saturate on this CPU for ``backend``: x86 without VNNI. oneDNN
    (OpenVINO's CPU plugin) honours ``ONEDNN_MAX_CPU_ISA``, so an AVX-512 machine told ``AVX2``
    runs OpenVINO's saturating kernels."""
    if not is_x86():
        return False
    if backend == "openvino" and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_SATURATING:
        return True
    return not any(f in instruction_sets() for f in VNNI)


def runs_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run BF16 here: the CPU has AVX-512 BF16 or AMX, and
    ``ONEDNN_MAX_CPU_ISA`` does not hold oneDNN below them (the plugin would still offer BF16, and
    fail to compile)."""
    flags = instruction_sets()
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and \
        os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in ONEDNN_WITHOUT_BF16

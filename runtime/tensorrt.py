"""The ``tensorrt`` backend: a part written by a ``trt-*`` recipe (a graph TensorRT's ONNX parser
builds an engine from), run where it was meant to run or, on request, simulated on the CPU.

``providers`` chooses, as for ONNX Runtime:
- ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]`` (the default
  where this onnxruntime has TensorRT: onnxruntime-gpu, NVIDIA's Jetson builds): ONNX Runtime's
  TensorRT execution provider, nodes TensorRT leaves on CUDA then CPU, engines and timing cache in
  :func:`engine_cache` (keyed by the part's digest, the GPU and TensorRT's version), optimization
  profiles from the manifest (:mod:`.engines`), FP16 for float16 parts.
- ``["TensorRT"]`` (the default where only TensorRT's Python package is present): the engine
  ``edgevfm engines --build`` wrote into that cache, run through TensorRT's Python API.
- ``["CPUExecutionProvider"]`` alone: the numerics simulated on ONNX Runtime's CPU provider. Its
  fusion of Q/DQ pairs into integer kernels is turned off (``session.disable_quant_qdq``): each
  DequantizeLinear runs in float before a float MatMul, which is what an INT8 engine computes
  (8-bit products summed in 32 bits, exactly), on every CPU (no VNNI needed, nothing saturates).

With neither TensorRT stack present and no CPU provider asked for, opening a part raises
``MissingExtraError`` (exit code 4) saying what to install on a Jetson: never a silent fall back.
The device paths (the first two) cannot run on the machines this project is built on; they are
small, kept here, and unverified until a device runs them (README, "Jetson").
"""

from __future__ import annotations

import ctypes
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from .backends import BACKENDS, OrtBackend, cache_root
from .errors import MissingExtraError, UsageError

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ENGINE = "TensorRT"  # a prebuilt engine (edgevfm engines --build) through TensorRT's Python API
SIMULATED = "TensorRT format, numerics simulated on CPU"
SIMULATE = [CPU]  # the providers that ask for the simulation
JETSON_INSTALL = (
    "on a Jetson, install NVIDIA's onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime; "
    "pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.io/jp6/cu126 for JetPack 6), or use the "
    "TensorRT Python package JetPack ships (python3-libnvinfer) with `edgevfm engines BUNDLE --build`; "
    "elsewhere, pass providers=['CPUExecutionProvider'] (edgevfm run --providers CPUExecutionProvider) to run "
    f"the part on the CPU ({SIMULATED})")


def simulated(providers: Sequence | None) -> bool:
    return list(providers or []) == SIMULATE


@BACKENDS.register("tensorrt")
class TensorRtBackend:
    """One TensorRT-format part (see the module). ``profiles``: {input: (min, opt, max)} sizes;
    ``precision``: the part's, which sets FP16 for float16 parts; ``digest``: the part's files'
    sha256, the first field of the engine cache's key."""

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence | None = None,
                 low_memory: bool = False, precision: str = "fp32", digest: str | None = None,
                 profiles: dict | None = None, spin_wait: bool = True, **_):
        wanted = list(providers) if providers else default_providers()
        self.simulated = simulated(wanted)
        if self.simulated:
            inner = OrtBackend(path, threads=threads, providers=SIMULATE, low_memory=low_memory,
                               config={"session.disable_quant_qdq": "1"}, spin_wait=spin_wait)
        elif wanted[0] == ENGINE:
            from .trt_engine import EngineRunner

            inner = EngineRunner(engine_file(path, digest), profiles or {})
        elif wanted[0] == TRT:
            if TRT not in ort_providers():
                raise MissingExtraError("TensorRT", f"the tensorrt part {Path(path).name}", install=JETSON_INSTALL)
            cache = engine_cache(digest or Path(path).stem)
            options = [trt_provider_options(cache, precision, profiles or {})] + [{} for _ in wanted[1:]]
            inner = OrtBackend(path, threads=threads, providers=wanted, low_memory=low_memory, provider_options=options,
                               spin_wait=spin_wait)
        else:
            raise UsageError(f"a tensorrt part runs on {[TRT, CUDA, CPU]}, on {[ENGINE]} (a prebuilt engine) or, "
                             f"simulated, on {SIMULATE}; found providers {wanted}")
        self._inner = inner
        self.input_names, self.output_names, self.signature = inner.input_names, inner.output_names, inner.signature

    def run(self, feeds):
        return self._inner.run(feeds)


def simulation_providers(path) -> list[str] | None:
    """The providers that run the bundle at ``path`` on this CPU: the simulation where it has a
    TensorRT-format part, else None (each backend's default). What a CPU benchmark opens it with."""
    import json

    try:
        parts = json.loads((Path(path) / "manifest.json").read_text())["parts"]
        tensorrt = any(p.get("backend") == "tensorrt" for p in parts.values())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None  # the loader says what is wrong with it
    return list(SIMULATE) if tensorrt else None


def ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def default_providers() -> list[str]:
    """ONNX Runtime's TensorRT provider where this onnxruntime has it, else a prebuilt engine where
    TensorRT's Python package is importable; else the typed error (the simulation is asked for,
    never fallen back to)."""
    if TRT in ort_providers():
        return [TRT, CUDA, CPU]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise MissingExtraError("TensorRT", "a TensorRT-format part (recipes trt-*)", install=JETSON_INSTALL) from None
    return [ENGINE]


def trt_provider_options(cache: Path, precision: str, profiles: dict) -> dict:
    """ONNX Runtime TensorRT provider options: engine and timing caches in ``cache``, FP16 for a
    float16 part, INT8 kernels allowed for a Q/DQ part (its scales come from its graph: explicit
    quantization, no calibration table), and one optimization profile from ``profiles``."""
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
               "trt_fp16_enable": "True" if precision == "fp16" else "False",
               "trt_int8_enable": "True" if precision in ("int8", "int4") else "False"}
    if profiles:
        for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = ",".join(f"{name}:{'x'.join(str(d) for d in sizes[i])}" for name, sizes in profiles.items())
    return options


@functools.lru_cache(maxsize=1)
def gpu_identity() -> dict | None:
    """{"name", "compute_capability"} of the first CUDA GPU (cuda-python, else nvidia-smi), or None;
    asked once per process (each part's engine cache is keyed by it)."""
    try:
        from cuda import cudart  # cuda-python, which TensorRT's Python samples use

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            return {"name": props.name.decode().strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # not installed, no device
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=20)
            name, capability = [v.strip() for v in done.stdout.splitlines()[0].split(",")][:2]
            return {"name": name, "compute_capability": capability}
        except (OSError, IndexError, ValueError, subprocess.SubprocessError):
            pass
    return None


@functools.lru_cache(maxsize=1)
def tensorrt_version() -> str | None:
    """The TensorRT this process would build with: its Python package's, else libnvinfer's (which
    onnxruntime-gpu loads), or None."""
    try:
        import tensorrt

        return tensorrt.__version__
    except ImportError:
        pass
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            found = ctypes.CDLL(name).getInferLibVersion()
        except (OSError, AttributeError):
            continue
        return f"{found // 10000}.{found // 100 % 100}.{found % 100}"
    return None


def cache_key(digest: str, gpu: dict | None, version: str | None) -> str:
    """The engine cache folder's name: the part's digest, the GPU's name and compute capability and
    TensorRT's version, so that an engine from another TensorRT or GPU is never loaded."""
    name = re.sub(r"[^a-z0-9]+", "-", (gpu or {}).get("name", "unknown-gpu").lower()).strip("-")
    capability = (gpu or {}).get("compute_capability", "unknown").replace(".", "")
    return f"{digest[:16]}-{name}-sm{capability}-trt{version or 'unknown'}"


def engine_cache(digest: str, gpu: dict | None = None, version: str | None = None) -> Path:
    """The folder a part's engines and timing cache live in, under :func:`.backends.cache_root`."""
    folder = cache_root() / "tensorrt" / cache_key(digest, gpu or gpu_identity(), version or tensorrt_version())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def engine_file(path: Path, digest: str | None) -> Path:
    """Where ``edgevfm engines --build`` put the part's engine; a typed error when it is not there."""
    found = engine_cache(digest or Path(path).stem) / (Path(path).stem + ".engine")
    if not found.is_file():
        raise UsageError(f"no engine for {Path(path).name} in {found.parent} (engines are built per GPU and TensorRT "
                         "version): run `edgevfm engines BUNDLE --build` on this device first")
    return found

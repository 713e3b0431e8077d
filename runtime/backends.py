"""Backends run one part of a bundle. Each imports its SDK inside the class, never at import time.

A backend takes and returns numpy arrays keyed by the graph's input and output names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .errors import MissingExtraError, UsageError
from .registry import Registry

BACKENDS: Registry[type] = Registry("backend")


# ONNX type strings -> the manifest's dtype names
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class Backend(Protocol):
    """``signature``: {tensor name: (dtype, shape)} of every input and output, where a shape holds
    ints for fixed sizes and anything else (a name, None) for dynamic ones."""

    input_names: list[str]
    output_names: list[str]
    signature: dict[str, tuple[str, list]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@BACKENDS.register("onnxruntime")
class OrtBackend:
    """ONNX Runtime. ``threads``: intra-op threads (None: ORT's default, one per core);
    ``providers``: execution providers in order of preference (default: CPU); ``low_memory``:
    no memory arena, no memory pattern - slower allocation, but memory is returned after each run
    (with the arena, SAM ViT-B's calibration graph grew from 6 to 11 GB on its second run)."""

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise MissingExtraError("runtime", "the onnxruntime backend", exc) from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: FP16 graphs warn about every unfoldable Resize
        if low_memory:
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        available = ort.get_available_providers()
        wanted = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in wanted if p not in available]
        if unknown:
            raise UsageError(
                f"execution providers {unknown} are not available in this onnxruntime build "
                f"(available: {available}): install the matching onnxruntime package or pick one of those"
            )
        self.session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=wanted)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.signature = {t.name: (ONNX_DTYPES.get(t.type, t.type), list(t.shape))
                          for t in self.session.get_inputs() + self.session.get_outputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))


def open_backend(name: str, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False):
    return BACKENDS.get(name)(path, threads=threads, providers=providers, low_memory=low_memory)

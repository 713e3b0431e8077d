"""This machine's measured peaks, so that a report can say how close a part runs to them:
FP32 GEMM and INT8 GEMM (ONNX Runtime ``MatMul`` and ``MatMulInteger``, U8 x S8) at a square
size, and memory read bandwidth (the limit of a decode step, which reads every weight once), on
the benchmark's thread count."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _gemm_graph(path: Path, n: int, integer: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a, y = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a, y = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a, [n, n])],
                              [helper.make_tensor_value_info("y", y, [n, n])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def gemm_peaks(threads: int, n: int = 2048, runs: int = 5) -> dict:
    """{"fp32_gflops": ..., "int8_gops": ..., "size": n, "threads": threads}, best of ``runs``."""
    from edgevfm.runtime.backends import OrtBackend

    found = {"size": n, "threads": threads, "how": "ONNX Runtime MatMul / MatMulInteger, best of %d" % runs}
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for key, integer in (("fp32_gflops", False), ("int8_gops", True)):
            path = Path(tmp) / f"{key}.onnx"
            _gemm_graph(path, n, integer)
            backend = OrtBackend(path, threads=threads)
            a = rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n)).astype(np.float32)
            backend.run({"a": a})
            best = min(_time(lambda: backend.run({"a": a})) for _ in range(runs))
            found[key] = 2 * n**3 / best / 1e9
    found["memory_gbps"] = memory_bandwidth(threads, runs=runs)
    return found


def memory_bandwidth(threads: int, megabytes: int = 512, runs: int = 5) -> float:
    """GB/s reading a ``megabytes`` float32 array (torch sum, ``threads`` threads), best of ``runs``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(megabytes * (1 << 20) // 4)
        data.sum()
        best = min(_time(data.sum) for _ in range(runs))
    finally:
        torch.set_num_threads(previous)
    return megabytes * (1 << 20) / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

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


def machine_peaks(threads: int) -> dict:
    """:func:`gemm_peaks` at ``threads``, measured once per process: the machine's peaks do not
    change between the benches of one run (``edgevfm demo`` benches every family in a row, and
    measuring takes seconds on 2 cores)."""
    if threads not in _MEASURED:
        _MEASURED[threads] = gemm_peaks(threads)
    return dict(_MEASURED[threads])


_MEASURED: dict[int, dict] = {}


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


def work_floor(reference: dict, part: str, call: str, row: dict, peaks: dict, allowed_ms: float, took_ms: float,
               what: str) -> str:
    """Why ``row``'s ``part`` misses a time goal, in arithmetic: the reference's count of the work
    in ``call`` (its Linear/Conv layers, ``gop``; every matrix product, ``product_gop``, of which the
    rest is attention's activation x activation products), the precision this row runs each kind
    at, and how long that work takes at this CPU's measured GEMM peaks against the ``allowed_ms``
    the goal leaves (where a precision has no measured peak, only the rate the part ran at)."""
    gemm = reference["gop"][call]
    products = (reference.get("product_gop") or {}).get(call)
    attention = max(products - gemm, 0.0) if products is not None else None
    precision = row["parts"][part]
    floats = (row.get("compute") or {}).get(part) or ("bf16" if precision == "bf16" else "fp32")
    rates = {"int8": peaks.get("int8_gops"), "fp32": peaks.get("fp32_gflops")}
    text = f"{what} is {gemm:.2f} GOP of Linear/Conv work ({precision.upper()} in this row)"
    if attention is None:
        text += " (attention products not counted)"
    else:
        text += f" and {attention:.2f} GOP of attention products ({floats.upper()})"
    linear = precision if precision in rates else None
    if linear and floats in rates and attention is not None and all(rates.values()):
        floor = (gemm / rates[linear] + attention / rates[floats]) * 1e3
        text += (f": at this CPU's measured GEMM peaks (INT8 {rates['int8']:.0f} GOP/s, FP32 {rates['fp32']:.0f} "
                 f"GFLOP/s) that work alone takes {floor:.1f} ms, "
                 + (f"more than the {allowed_ms:.1f} ms the goal allows" if floor > allowed_ms
                    else f"within the {allowed_ms:.1f} ms the goal allows: the rest goes where the peaks do not "
                    "reach (small matrices, layout changes, element-wise operations; the profile tool shows where)"))
    else:
        missing = sorted({p.upper() for p in (precision, floats) if p not in rates})
        text += f": the goal allows {allowed_ms:.1f} ms" + (f" (no {' or '.join(missing)} peak is measured here)"
                                                           if missing else "")
    return text + f"; the part ran at {(gemm + (attention or 0.0)) / took_ms * 1e3:.0f} GOP/s"

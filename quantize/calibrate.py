"""Activation ranges for static INT8, collected lean.

ONNX Runtime's own calibrator reduces every input and output of every MatMul/Gemm/Conv; on SAM's
ViT-B encoder that includes the 4096 x 4096 attention maps of its global-attention layers, which
ORT keeps alive until the end of the run: one calibration sample needed more than 24 GiB. Here only
the activations that the INT8 graph quantizes are reduced - the first input of the nodes with a
constant weight, and their outputs - and the activation x activation MatMuls (attention) stay in
float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def weight_nodes(model, op_types: list[str], exclude=()) -> tuple[list[str], list[str]]:
    """(activation tensors to calibrate, names of op_types nodes without a constant weight or in
    ``exclude``: the nodes to leave in float)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    tensors, excluded = [], []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        if len(node.input) < 2 or node.input[1] not in constants or node.name in exclude:
            excluded.append(node.name)
        else:  # the quantizer wants ranges for the activation in and the result out
            tensors += [t for t in (node.input[0], *node.output) if t not in constants]
    return list(dict.fromkeys(tensors)), excluded


def activation_ranges(model_path: Path, feeds: list[dict], tensors: list[str]) -> dict[str, tuple]:
    """{tensor: (min, max)} over every feed, with ReduceMin/ReduceMax added to a copy of the graph."""
    import onnx
    from onnx import helper

    from edgevfm.runtime.backends import OrtBackend

    model = onnx.load(str(model_path))
    for i, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"edgevfm_calib_{i}_{op}"
            model.graph.node.append(helper.make_node(op, [name], [out], keepdims=0))
            model.graph.output.append(helper.make_empty_tensor_value_info(out))
    with tempfile.TemporaryDirectory(prefix="edgevfm-calib-") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(path))
        backend = OrtBackend(path, low_memory=True)
        lowest = np.full(len(tensors), np.inf, np.float32)
        highest = np.full(len(tensors), -np.inf, np.float32)
        for feed in feeds:
            out = backend.run(feed)
            lowest = np.minimum(lowest, [out[f"edgevfm_calib_{i}_ReduceMin"] for i in range(len(tensors))])
            highest = np.maximum(highest, [out[f"edgevfm_calib_{i}_ReduceMax"] for i in range(len(tensors))])
    return {name: (np.float32(lo), np.float32(hi)) for name, lo, hi in zip(tensors, lowest, highest)}


def write_cache(ranges: dict[str, tuple], path: Path) -> Path:
    """ONNX Runtime's calibration cache (JSON), which ``quantize_static`` reads instead of calibrating."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), path)
    return path

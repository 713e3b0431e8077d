"""TensorRT-format recipes: graphs that TensorRT's ONNX parser builds an engine from, written on any
machine, checked against TensorRT's operator tables (:mod:`.check`, run at the end of every one of
them) and simulated on ONNX Runtime's CPU provider until the engine is built on the device. Their
parts have the ``tensorrt`` backend (``edgevfm.runtime.tensorrt``).

- ``trt-int8``: explicit quantization as TensorRT wants it (the option set NVIDIA's Model Optimizer
  passes to ONNX Runtime's quantizer): QuantizeLinear/DequantizeLinear pairs, signed INT8 with zero
  points 0 for activations and weights, weights per output channel, biases left in float; only on
  the MatMul/Gemm/Conv nodes with a constant weight (attention's activation x activation products
  stay float, and so do the MatMuls after a GELU: :func:`after_gelu`), calibrated on the family's feeds. No ONNX Runtime contrib operator, no
  integer-arithmetic operator (MatMulInteger, QLinear*), no graph pre-processing (TensorRT fuses
  the Q/DQ pairs itself).
- ``trt-fp16``: the ``fp16`` recipe's graph (float16 weights and compute, normalisation in float32),
  marked for a strongly typed build (``trtexec --stronglyTyped``).
- ``trt-int4``: a language model's MatMul weights, weight-only, as standard ``DequantizeLinear``
  before a plain MatMul (no zero point, opset 21): symmetric 4-bit blocks of 32 along the input
  axis (INT4, ``block_size``) where ``int4-mixed`` puts 4 bits, 8-bit weights per output channel
  where it puts 8 (the LM head among them: int4-mixed's measurement, recipes.py). TensorRT 10 reads
  both (weight-only quantization); ONNX Runtime's CPU optimizer fuses the pattern into its own
  kernels. Family recipes (``llava-trt-int4``, ``blip2-trt-int4``) put it on the LLM and
  trt-fp16 on the rest.
- ``trt-int8-weights``: every MatMul weight of a language model at 8 bits per output channel,
  weight-only: static INT8 activations (``trt-int8``) lose most of a trained LLM's next-token
  agreement (its activations have outlier channels; the TensorRT report's trained:llava-smol rows),
  weight-only keeps it. Family recipes ``llava-trt-int8``, ``blip2-trt-int8``.
- ``trt-fp32``: the graph as exported, for parts measurement keeps in float32 (``sam-trt-int8``'s
  prompt decoder, as ``sam-int8``'s).

All refuse a graph that holds ONNX Runtime contrib operators before they start (LLaVA's default
builder graph: export it with ``--llm-graph plain``). Not offered by ``--recipe auto`` or the demo:
they are judged on the device, not on this CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

from edgevfm.runtime.errors import InputError

from .recipes import INT8_OPS, Recipe, fp16, gemms_as_matmuls, register

TARGET = "tensorrt"
# what no TensorRT-format graph may hold: ONNX Runtime's integer-arithmetic and contrib operators
NOT_FOR_TENSORRT = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
                    "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized", "QAttention", "QGemm")
INT4_BLOCK = 32


def standard_onnx(src: Path, weights: bool = True):
    """The FP32 part (``weights=False``: its graph without the weights kept beside it), refused when
    it holds operators outside standard ONNX (TensorRT cannot parse them)."""
    import onnx

    model = onnx.load(str(src), load_external_data=weights)
    custom = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise InputError(f"{src.name} holds operators TensorRT cannot parse ({', '.join(custom[:5])}): export the model "
                         "again with --llm-graph plain (standard ONNX operators) and quantize that bundle")
    return model


def trt_int8(src: Path, dst: Path, feeds=None, gelu_in_float: bool = True, **_) -> dict:
    """``gelu_in_float=False``: every MatMul/Gemm with a constant weight in INT8, the inputs after a
    GELU included (the control the TensorRT reports measure the default against: :func:`after_gelu`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .calibrate import activation_ranges, weight_nodes, write_cache

    model = standard_onnx(src, weights=False)  # ONNX Runtime's quantizer reads the weights itself
    one_sided = after_gelu(model) if gelu_in_float else []
    tensors, excluded = weight_nodes(model, INT8_OPS, exclude=one_sided)
    cache = write_cache(activation_ranges(src, feeds, tensors), dst.with_name(f".{dst.stem}.calib.json"))
    try:
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS,
                        nodes_to_exclude=excluded, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                       "QDQDisableWeightAdjustForInt32Bias": True})
    finally:
        cache.unlink(missing_ok=True)
    return {"target": TARGET, "strongly_typed": True, "format": "QDQ", "activations": "int8 symmetric",
            "weights": "int8 symmetric per-channel", "op_types": INT8_OPS, "calibrate_method": "minmax",
            "float_nodes": len(excluded), "float_after_gelu": len(one_sided), "calibrated_tensors": len(tensors)}


ONE_SIDED = ("Erf", "Gelu", "Sigmoid", "Tanh")  # GELU as exported (erf), CLIP's quick GELU (sigmoid), tanh GELU
THROUGH = ("Mul", "Add", "Div")


def after_gelu(model) -> list[str]:
    """The MatMul/Gemm nodes whose input is a GELU's output (an MLP's second projection): its values
    lie in [-0.17, max], so symmetric INT8 spends half its codes on values that never occur. Kept in
    float; the TensorRT report (benchmarks/reports/tensorrt-clip-tiny, its command inside) has the
    accuracy of both choices (trt-int8 and trt-int8-gelu)."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def one_sided(name: str, depth: int = 4) -> bool:
        node = producer.get(name)
        if node is None or depth == 0:
            return False
        if node.op_type in ONE_SIDED:
            return True
        return node.op_type in THROUGH and any(one_sided(i, depth - 1) for i in node.input if i)

    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and one_sided(n.input[0])]


def trt_fp16(src: Path, dst: Path, feeds=None, **_) -> dict:
    return {"target": TARGET, "strongly_typed": True, **fp16(src, dst, model=standard_onnx(src))}


def trt_int4(src: Path, dst: Path, feeds=None, block_size: int = INT4_BLOCK, bits: int = 4, **_) -> dict:
    """Weight-only, with int4-mixed's measured choice of bits (recipes.wide_matmuls): symmetric 4-bit
    blocks along K on the MLP's gate/up projections, 8-bit weights per output channel on the
    attention and down projections, the LM head and the first and last layers. Scales are positive
    (amax / 7, amax / 127), as TensorRT requires (ONNX Runtime's own 4-bit quantizer signs them).
    A MatMul whose K does not divide into blocks keeps 8 bits. ``bits=8``: every MatMul at 8 bits
    (``trt-int8-weights``: a language model's INT8, as TensorRT-LLM's int8 weight-only)."""
    from edgevfm.export.external import save_onnx

    from .recipes import wide_matmuls

    model = standard_onnx(src)
    if bits == 4:
        model = at_opset(model, 21)  # INT4 and DequantizeLinear's block_size; 8 bits per channel need 13
    model = gemms_as_matmuls(model)  # OPT's fc1/fc2 (BLIP-2) are Gemm
    wide = set(wide_matmuls(model)) if bits == 4 else {n.name for n in model.graph.node}
    weights = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, counts = [], {4: 0, 8: 0}
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2 or uses[node.input[1]] > 1:
            nodes.append(node)
            continue
        four = node.name not in wide and weight.dims[0] % block_size == 0
        nodes += dequantized_matmul(model, node, weight, block_size if four else None)
        counts[4 if four else 8] += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    save_onnx(model, dst)
    found = {"target": TARGET, "strongly_typed": True, "format": "weight-only DequantizeLinear", "symmetric": True,
             "matmuls_8_bit": counts[8]}
    if bits == 4:
        found.update(block_size=block_size, opset=21, matmuls_4_bit=counts[4],
                     eight_bit="as int4-mixed: attention, down projections, LM head, first and last layers")
    return found


def dequantized_matmul(model, node, weight, block_size: int | None) -> list:
    """``node``'s constant [K, N] weight replaced by a DequantizeLinear of it: INT4 blocks of
    ``block_size`` along K (scale [K / block, N]), or with None INT8 per output channel (scale [N])."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    values = numpy_helper.to_array(weight).astype(np.float32)
    rows, cols = values.shape
    if block_size:
        blocks = values.reshape(rows // block_size, block_size, cols)
        scale = np.abs(blocks).max(axis=1) / 7.0
        scale[scale == 0] = 1.0  # an all-zero block: any positive scale
        quantized = np.clip(np.rint(blocks / scale[:, None, :]), -8, 7).reshape(rows, cols)
        stored = helper.make_tensor(f"{weight.name}_int4", TensorProto.INT4, [rows, cols],
                                    quantized.astype(np.int8).flatten().tolist())
        attrs = {"axis": 0, "block_size": block_size}
    else:
        scale = np.abs(values).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
        stored = numpy_helper.from_array(quantized, f"{weight.name}_int8")
        attrs = {"axis": 1}
    model.graph.initializer.remove(weight)
    model.graph.initializer.extend([stored, numpy_helper.from_array(scale.astype(np.float32), f"{weight.name}_scale")])
    return [helper.make_node("DequantizeLinear", [stored.name, f"{weight.name}_scale"], [f"{weight.name}_dequantized"],
                             name=f"{node.name}/DequantizeLinear", **attrs),
            helper.make_node("MatMul", [node.input[0], f"{weight.name}_dequantized"], list(node.output), name=node.name)]


def at_opset(model, opset: int):
    """``model`` converted to ``opset`` (INT4 and DequantizeLinear's ``block_size`` need 21): the
    operators whose signature changed since the export's opset (ReduceMean's axes) are rewritten."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    converted = version_converter.convert_version(model, opset)
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def trt_fp32(src: Path, dst: Path, feeds=None, **_) -> dict:
    """The FP32 graph as it is, for TensorRT: a part that measurement keeps in float32."""
    from edgevfm.export.external import save_onnx

    save_onnx(standard_onnx(src), dst)
    return {"target": TARGET, "strongly_typed": True}


register(Recipe("trt-int8", "int8", "TensorRT format: signed symmetric INT8 Q/DQ (zero points 0, per-channel weights, "
                "float biases) on MatMul/Gemm/Conv, calibrated on real photos; simulated on the CPU here", trt_int8,
                needs_calibration=True, listed=False, backend=TARGET))
register(Recipe("trt-int8-gelu", "int8", "trt-int8 with the MatMuls after a GELU in INT8 too (the control its choice is "
                "measured against)", functools.partial(trt_int8, gelu_in_float=False), needs_calibration=True,
                listed=False, backend=TARGET))
register(Recipe("trt-fp16", "fp16", "TensorRT format: float16 weights and compute, normalisation in float32, for a "
                "strongly typed build; simulated on the CPU here", trt_fp16, listed=False, backend=TARGET))
register(Recipe("trt-int4", "int4", "TensorRT format: weight-only DequantizeLinear before each MatMul, 4-bit blocks "
                "(INT4, opset 21) and 8 bits where int4-mixed keeps 8, for language models; simulated on the CPU here", trt_int4, listed=False,
                backend=TARGET, families=("llava", "blip2")))
register(Recipe("trt-int8-weights", "int8", "TensorRT format: 8-bit weight-only DequantizeLinear (per output channel) "
                "before every MatMul, activations in float, for language models; simulated on the CPU here",
                functools.partial(trt_int4, bits=8), listed=False, backend=TARGET, families=("llava", "blip2")))
register(Recipe("trt-fp32", "fp32", "TensorRT format: the FP32 graph as exported (a part kept in float32)", trt_fp32,
                listed=False, backend=TARGET))

"""TensorRT-format recipes: graphs that TensorRT's ONNX parser builds an engine from, written on any
machine and simulated on ONNX Runtime's CPU provider until the engine is built on the device.

- ``trt-int8``: explicit quantization as TensorRT wants it (the option set NVIDIA's Model Optimizer
  passes to ONNX Runtime's quantizer): QuantizeLinear/DequantizeLinear pairs, signed INT8 with zero
  points 0 for activations and weights, weights per output channel, biases left in float; only on
  the MatMul/Gemm/Conv nodes with a constant weight (attention's activation x activation products
  stay float), calibrated on the family's feeds. No ONNX Runtime contrib operator, no
  integer-arithmetic operator (MatMulInteger, QLinear*), no graph pre-processing (TensorRT fuses
  the Q/DQ pairs itself).
- ``trt-fp16``: the ``fp16`` recipe's graph (float16 weights and compute, normalisation in float32),
  marked for a strongly typed build (``trtexec --stronglyTyped``).

Not offered by ``--recipe auto`` or the demo: they are judged on a GPU, not on this CPU.
"""

from __future__ import annotations

from pathlib import Path

from .recipes import FULL_RANGE, INT8_ACTIVATIONS, INT8_OPS, Recipe, fp16, register

TARGET = "tensorrt"
# what no TensorRT-format graph may hold: ONNX Runtime's integer-arithmetic and contrib operators
NOT_FOR_TENSORRT = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
                    "MatMulIntegerToFloat", "MatMulNBits", "GatherBlockQuantized", "QAttention", "QGemm")


def trt_int8(src: Path, dst: Path, feeds=None, **_) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .calibrate import activation_ranges, weight_nodes, write_cache

    tensors, excluded = weight_nodes(onnx.load(str(src), load_external_data=False), INT8_OPS)
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
    return {"target": TARGET, "format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
            "op_types": INT8_OPS, "calibrate_method": "minmax", "float_nodes": len(excluded),
            "calibrated_tensors": len(tensors), INT8_ACTIVATIONS: FULL_RANGE}


def trt_fp16(src: Path, dst: Path, feeds=None, **_) -> dict:
    return {"target": TARGET, "strongly_typed": True, **fp16(src, dst)}


register(Recipe("trt-int8", "int8", "TensorRT format: signed symmetric INT8 Q/DQ (zero points 0, per-channel weights, "
                "float biases) on MatMul/Gemm/Conv, calibrated on real photos; simulated on the CPU here", trt_int8,
                needs_calibration=True, listed=False))
register(Recipe("trt-fp16", "fp16", "TensorRT format: float16 weights and compute, normalisation in float32, for a "
                "strongly typed build; simulated on the CPU here", trt_fp16, listed=False))

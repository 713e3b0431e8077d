"""Quantization recipes. Each turns one FP32 ONNX part into a compressed one with ONNX Runtime.

Choices, measured on this project's CPU (2-core EPYC with AVX-512 VNNI, see FACTS.md):
- ``int8-static`` quantizes only MatMul/Gemm/Conv with constant weights (QDQ, U8 activations, S8
  per-channel weights): quantizing every op, or S8 activations, costs both accuracy and speed
  here. Activation ranges come from :mod:`.calibrate`, which scales to SAM's encoder.
- ``int8-dynamic`` quantizes MatMul/Gemm/Conv weights; activations are scaled at run time.
- both INT8 recipes run ONNX Runtime's quantization pre-processing first (graph optimisation).
- ``int4`` is weight-only ``MatMulNBits`` with a configurable block size, int8 compute.
- ``fp16`` converts weights and compute to float16 with float32 inputs/outputs and LayerNorm,
  Softmax and the reductions kept in float32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgevfm.export.external import save_onnx
from edgevfm.runtime.registry import Registry

RECIPES: Registry["Recipe"] = Registry("recipe")
# Conv too: CLIP's patch embedding is one large Conv, worth 6 ms of ViT-B/32's 28 in dynamic INT8.
INT8_OPS = ["MatMul", "Gemm", "Conv"]


KEEP = "fp32"  # in a per-part plan: leave this part as exported


@dataclass(frozen=True)
class Recipe:
    """One way to compress a part (``apply``), or, with ``plan``, a family's choice of one
    recipe per part ({part: recipe name or "fp32"}), valid for ``families`` only."""

    name: str
    precision: str
    description: str
    apply: Callable[..., dict] | None = None
    needs_calibration: bool = False
    plan: dict[str, str] | None = None
    families: tuple[str, ...] | None = None

    def steps(self, parts: list[str]) -> dict[str, "Recipe | None"]:
        """{part: the recipe that compresses it, or None to keep it FP32}."""
        if self.plan is None:
            return {part: self for part in parts}
        return {part: None if self.plan.get(part, KEEP) == KEEP else RECIPES.get(self.plan[part]) for part in parts}


@contextlib.contextmanager
def quiet_ort_logging():
    """ONNX Runtime's quantizers log advice and per-node progress; keep them off the console."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _register(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.name)(recipe)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._iter = iter(feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):  # pragma: no cover - ORT calls it for some calibrators only
        pass


@contextlib.contextmanager
def pre_processed(src: Path, dst: Path):
    """ONNX Runtime's quantization pre-processing (graph optimisation, shape inference) into a
    temporary file beside ``dst``. On ViT-B/32 it takes static INT8 from 22 to 19 ms."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = dst.with_name(f".{dst.stem}.pre.onnx")
    try:
        quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def int8_dynamic(src: Path, dst: Path, feeds=None, **_) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with pre_processed(src, dst) as pre:
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=INT8_OPS)
    return {"weight_type": "int8", "op_types": INT8_OPS, "pre_processed": True}


def int8_static(src: Path, dst: Path, feeds=None, **_) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .calibrate import activation_ranges, weight_nodes, write_cache

    with pre_processed(src, dst) as pre:
        tensors, excluded = weight_nodes(onnx.load(str(pre), load_external_data=False), INT8_OPS)
        cache = write_cache(activation_ranges(pre, feeds, tensors), dst.with_name(f".{dst.stem}.calib.json"))
        try:
            quantize_static(str(pre), str(dst), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=INT8_OPS, nodes_to_exclude=excluded, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache))
        finally:
            cache.unlink(missing_ok=True)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel", "op_types": INT8_OPS,
            "calibrate_method": "minmax", "pre_processed": True, "float_nodes": len(excluded),
            "calibrated_tensors": len(tensors)}


def int4(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block_size,
                                     is_symmetric=True, accuracy_level=4)
    quantizer.process()
    save_onnx(quantizer.model.model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "accuracy_level": 4}


# Decoder weights that 4 bits hurt most (k-quants keep them wider for the same reason): measured on
# trained:llava-smol (SmolLM2-135M), 4-bit RTN everywhere costs +33% perplexity and KL 0.40 to FP32;
# these at 8 bits with 4 elsewhere, +12% / 0.10, for 34% more bytes than all-4-bit.
SENSITIVE_MATMULS = ("down_proj", "v_proj")


def int4_mixed(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """4-bit weight-only MatMulNBits, with the sensitive projections and the LM head (the MatMul
    that makes ``logits``) at 8 bits."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    wide = [n.name for n in model.graph.node if n.op_type == "MatMul"
            and (any(k in n.name for k in SENSITIVE_MATMULS) or "logits" in n.output)]
    for bits, chosen in ((4, dict(nodes_to_exclude=wide)), (8, dict(nodes_to_include=wide))):
        if bits == 8 and not wide:
            continue
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4, **chosen)
        quantizer.process()
        model = quantizer.model.model
    save_onnx(model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "accuracy_level": 4,
            "8_bit": {"patterns": list(SENSITIVE_MATMULS) + ["LM head"], "matmuls": len(wide)}}


def int4_gather(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """An embedding table (Gather) at 4 bits: GatherBlockQuantized, blocks along the hidden axis."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block_size, is_symmetric=True,
                                     op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    quantizer.process()
    save_onnx(quantizer.model.model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "op": "GatherBlockQuantized"}


FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Div", "Erf"]


def fp16(src: Path, dst: Path, feeds=None, **_) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    save_onnx(model, dst)
    return {"kept_fp32": FP16_KEEP_FP32}


_register(Recipe("int8-dynamic", "int8", "INT8 weights, activations quantized at run time (MatMul/Gemm/Conv)",
                 int8_dynamic))
_register(Recipe("int8-static", "int8", "INT8 QDQ calibrated on real photos (MatMul/Gemm/Conv, U8S8)",
                 int8_static, needs_calibration=True))
_register(Recipe("int4", "int4", "4-bit weight-only MatMulNBits, int8 compute", int4))
_register(Recipe("fp16", "fp16", "float16 weights and compute, float32 I/O and normalisation", fp16))
# language-model steps: family recipes name them per part (see quantize/families/llava.py)
_register(Recipe("int4-mixed", "int4", "4-bit weight-only, down/v projections and LM head at 8 bits", int4_mixed,
                 families=("llava",)))
_register(Recipe("int4-embed", "int4", "4-bit embedding table (GatherBlockQuantized)", int4_gather,
                 families=("llava",)))


def register_family_recipe(name: str, family: str, description: str, plan: dict[str, str]) -> Recipe:
    """A family's own recipe: one existing recipe (or "fp32") per part."""
    steps = [RECIPES.get(r) for r in plan.values() if r != KEEP]
    precision = "/".join(sorted({s.precision for s in steps} | ({"fp32"} if KEEP in plan.values() else set())))
    return _register(Recipe(name, precision, description, plan=plan, families=(family,),
                            needs_calibration=any(s.needs_calibration for s in steps)))


def recipes_for(family: str) -> list[str]:
    """Names of the recipes that apply to ``family``'s bundles: the generic ones and its own."""
    return [name for name, recipe in RECIPES.items() if recipe.families is None or family in recipe.families]

"""Quantization recipes. Each turns one FP32 ONNX part into a compressed one with ONNX Runtime.

Choices, measured on a 2-core AVX-512 VNNI CPU (make report: benchmarks/reports, each naming its CPU):
- ``int8-static`` quantizes only MatMul/Gemm/Conv with constant weights (QDQ, U8 activations, U8
  per-channel weights): quantizing every op, or S8 activations, costs both accuracy and speed
  here. Activation ranges come from :mod:`.calibrate`, which scales to SAM's encoder.
- ``int8-dynamic`` quantizes MatMul/Gemm/Conv weights; activations are scaled at run time.
- both INT8 recipes multiply u8 activations by **u8** weights: x86 CPUs without VNNI add pairs of
  u8 x s8 products in 16 bits, which saturates; ONNX Runtime's U8U8 kernels widen first and cannot,
  so a bundle computes the same on every x86 CPU. Of the known fixes it is the only one that keeps
  CLIP ViT-B/32's cosine floor (7-bit weights, ``reduce_range``, fall below it); it costs speed on
  VNNI. docs/int8-on-every-cpu.md has the measurements and the command that makes them.
- both INT8 recipes run ONNX Runtime's quantization pre-processing first (graph optimisation).
- ``int4`` is weight-only ``MatMulNBits`` with a configurable block size, int8 compute.
- ``fp16`` converts weights and compute to float16 with float32 inputs/outputs and LayerNorm,
  Softmax and the reductions kept in float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgevfm.export.external import save_onnx
from edgevfm.runtime.registry import Registry

RECIPES: Registry["Recipe"] = Registry("recipe")
# Conv too: CLIP's patch embedding is one large Conv, a sizeable share of ViT-B/32's time in dynamic INT8.
INT8_OPS = ["MatMul", "Gemm", "Conv"]


KEEP = "fp32"  # in a per-part plan: leave this part as exported
# a part's manifest key, written by a recipe whose part multiplies 8-bit activations by 8-bit
# weights: "saturation-safe" (U8U8, or 7-bit weights) or "full-range" (saturates on x86 without VNNI)
INT8_ACTIVATIONS = "int8_activations"
SATURATION_SAFE, FULL_RANGE = "saturation-safe", "full-range"
# the INT8 recipes' weights: u8 (the default: U8U8 kernels, safe everywhere) or full-range s8 (U8S8)
WEIGHT_TYPES = {"uint8": lambda types: types.QUInt8, "int8": lambda types: types.QInt8}


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
    backend: str = "onnxruntime"  # of the parts it writes ("openvino": an IR, .xml + .bin); a plan's: "a/b"
    compute: str | None = None  # the precision its parts' float operations run at, where not fp32 (OpenVINO)
    listed: bool = True  # False: a step of family plans only, not offered as a recipe of its own

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


def register(recipe: Recipe) -> Recipe:
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
    temporary file beside ``dst``; it makes static INT8 faster on ViT-B/32 (fewer, fused nodes)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    tmp = dst.with_name(f".{dst.stem}.pre.onnx")
    data = tmp.with_name(tmp.name + ".data")
    # a part over 2 GB (BLIP-2's ViT-g) keeps its weights beside it: so must the pre-processed copy
    external = any(uses_external_data(t) for t in _get_all_tensors(onnx.load(str(src), load_external_data=False)))
    try:
        quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True, save_as_external_data=external,
                          all_tensors_to_one_file=True, external_data_location=data.name)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


def int8_dynamic(src: Path, dst: Path, feeds=None, weights: str = "uint8", **_) -> dict:
    """Dynamic INT8 (see the module); ``weights="int8"`` as for :func:`int8_static`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with pre_processed(src, dst) as pre:
        quantize_dynamic(str(pre), str(dst), weight_type=WEIGHT_TYPES[weights](QuantType), per_channel=False,
                         op_types_to_quantize=INT8_OPS)
    return {"weight_type": weights, "op_types": INT8_OPS, "pre_processed": True,
            INT8_ACTIVATIONS: SATURATION_SAFE if weights == "uint8" else FULL_RANGE}


def int8_static(src: Path, dst: Path, feeds=None, weights: str = "uint8", **_) -> dict:
    """Static INT8 (see the module). ``weights="int8"`` writes the full-range U8S8 graph instead,
    faster on VNNI and saturating without it (kept to measure what the default avoids)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .calibrate import activation_ranges, weight_nodes, write_cache

    with pre_processed(src, dst) as pre:
        tensors, excluded = weight_nodes(onnx.load(str(pre), load_external_data=False), INT8_OPS)
        cache = write_cache(activation_ranges(pre, feeds, tensors), dst.with_name(f".{dst.stem}.calib.json"))
        try:
            quantize_static(str(pre), str(dst), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=INT8_OPS, nodes_to_exclude=excluded, per_channel=True,
                            activation_type=QuantType.QUInt8,
                            weight_type=WEIGHT_TYPES[weights](QuantType),
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache))
        finally:
            cache.unlink(missing_ok=True)
    return {"format": "QDQ", "activations": "uint8", "weights": f"{weights} per-channel", "op_types": INT8_OPS,
            "calibrate_method": "minmax", "pre_processed": True, "float_nodes": len(excluded),
            "calibrated_tensors": len(tensors),
            INT8_ACTIVATIONS: SATURATION_SAFE if weights == "uint8" else FULL_RANGE}


def int4(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block_size,
                                     is_symmetric=True, accuracy_level=4)
    quantizer.process()
    save_onnx(quantizer.model.model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "accuracy_level": 4}


# Which decoder MatMuls stay at 8 bits in ``int4-mixed`` was chosen on trained:llava-smol (SmolLM2-135M,
# builder graph) by KL to FP32 and perplexity on an English text, adding 8-bit layers in order of the
# damage they removed per MB: the LM head, q/k/v, o and down projections, then every MatMul of the
# first and last two layers; the gate/up projections stay at 4 bits. The LLaVA report's llava-int4,
# llava-int4-rtn (all 4-bit) and llava-int8 (all 8-bit) rows measure the result against both ends.
# (The FP32 reference is SmolLM2's Q4_1 GGUF dequantized: an integer 4-bit grid cannot land on Q4_1's
# float-offset grid, which is why 4 bits cost more here than on weights trained in FP32.)
# qkv_proj (the builder's) contains v_proj; OPT (BLIP-2) names its o and down projections out_proj and fc2
WIDE_MATMULS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "out_proj", "fc2")
WIDE_EDGE_LAYERS = 2


def _layer(name: str) -> int | None:
    import re

    found = re.search(r"layers\.(\d+)[./]", name)
    return int(found.group(1)) if found else None


def wide_matmuls(model) -> list[str]:
    """The MatMuls ``int4-mixed`` keeps at 8 bits: attention and down projections, the LM head (the
    MatMul that makes ``logits``) and everything in the first and last ``WIDE_EDGE_LAYERS`` layers."""
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    layers = [i for i in (_layer(n.name) for n in matmuls) if i is not None]
    last = max(layers, default=-1)
    edge = set(range(WIDE_EDGE_LAYERS)) | set(range(last - WIDE_EDGE_LAYERS + 1, last + 1))
    return [n.name for n in matmuls if any(k in n.name for k in WIDE_MATMULS) or "logits" in n.output
            or _layer(n.name) in edge]


def gemms_as_matmuls(model):
    """Every Gemm with a constant weight as MatMul (+ Add for its bias), so that weight-only
    quantizers, which take MatMul only, reach it: OPT's fc1/fc2 (BLIP-2) export as Gemm, and stayed
    FP32 (a third of the weights) before this."""
    import numpy as np
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = f"{node.name or node.output[0]}.weight"
        model.graph.initializer.append(numpy_helper.from_array(weight, name))
        biased = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}.matmul" if biased else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}/MatMul"))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}/Add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _nbits(model, bits: int, block_size: int, **chosen):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = gemms_as_matmuls(model)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                     **chosen)
    with all_zero_blocks_allowed():
        quantizer.process()
    return quantizer.model.model


def all_zero_blocks_allowed():
    """A block of zeros (an embedding's padding row) has scale 0: ORT's quantizer divides by it
    under ``np.where(scale == 0, 0, ...)``, which is right but makes numpy warn on every such block."""
    import numpy as np

    return np.errstate(divide="ignore", invalid="ignore")


def int4_mixed(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """4-bit weight-only MatMulNBits (RTN) where it costs least, 8 bits where it costs most."""
    import onnx

    model = gemms_as_matmuls(onnx.load(str(src)))  # OPT's fc1/fc2 are Gemm: make them visible first
    wide = wide_matmuls(model)
    model = _nbits(model, 4, block_size, nodes_to_exclude=wide)
    if wide:
        model = _nbits(model, 8, block_size, nodes_to_include=wide)
    save_onnx(model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "accuracy_level": 4,
            "8_bit": {"patterns": list(WIDE_MATMULS) + ["LM head", f"first and last {WIDE_EDGE_LAYERS} layers"],
                      "matmuls": len(wide)}}


def int8_weights(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """Every MatMul weight at 8 bits (MatMulNBits, int8 compute): the accurate choice for an LLM."""
    import onnx

    save_onnx(_nbits(onnx.load(str(src)), 8, block_size), dst)
    return {"bits": 8, "block_size": block_size, "symmetric": True, "accuracy_level": 4}


def int4_gather(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """An embedding table (Gather) at 4 bits: GatherBlockQuantized, blocks along the hidden axis."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block_size, is_symmetric=True,
                                     op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    with all_zero_blocks_allowed():
        quantizer.process()
    save_onnx(quantizer.model.model, dst)
    return {"bits": 4, "block_size": block_size, "symmetric": True, "op": "GatherBlockQuantized"}


FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Div", "Erf"]
# after a norm's square, the statistic's elementwise steps stay float32 too (see norm_statistics)
NORM_STEPS = ("ReduceMean", "Add", "Sqrt", "Div", "Reciprocal")


def norm_statistics(model) -> list[str]:
    """The nodes of every normalisation written out in elementwise operations (RMSNorm, T5's norm,
    SAM's LayerNorm2d): from the Pow that squares to the Mul or Div that scales by the statistic.
    ONNX Runtime's converter keeps each blocked node in float32 but casts its output back to float16
    before the next one: a square of 290 (trained:llava-smol's residual stream at layer 2) is past
    float16's 65504, and the statistic became inf (python -m edgevfm.benchmarks.tensorrt has the
    bench rows of trt-fp16 on trained:llava-smol)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kept: set[str] = set()
    for start in (n for n in model.graph.node if n.op_type == "Pow"):
        frontier = [start]
        while frontier:
            node = frontier.pop()
            if node.name in kept:
                continue
            kept.add(node.name)
            for after in (c for out in node.output for c in consumers.get(out, [])):
                if after.op_type in NORM_STEPS:
                    frontier.append(after)
                elif after.op_type == "Mul":
                    kept.add(after.name)  # x * 1/rms: the normalised value, back in range
    return sorted(kept)


def without_round_trips(model):
    """Drop every Cast to float16 followed at once by a Cast back to float32: the converter puts
    one between two nodes it keeps in float32, and the value must not pass through float16."""
    from onnx import TensorProto, helper

    producer = {o: n for n in model.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    rename, dropped = {}, set()
    for node in model.graph.node:
        if node.op_type != "Cast" or helper.get_attribute_value(node.attribute[0]) != TensorProto.FLOAT:
            continue
        before = producer.get(node.input[0])
        if before is not None and before.op_type == "Cast" \
                and helper.get_attribute_value(before.attribute[0]) == TensorProto.FLOAT16 \
                and types.get(before.input[0]) == TensorProto.FLOAT:
            rename[node.output[0]] = before.input[0]
            dropped.add(node.name)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        node.input[:] = [rename.get(i, i) if i not in outputs else i for i in node.input]
    kept = [n for n in model.graph.node if n.name not in dropped or any(o in outputs for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def fp16(src: Path, dst: Path, feeds=None, model=None, **_) -> dict:
    """``model``: the part at ``src`` already loaded (trt-fp16 has read it to check it)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = model if model is not None else onnx.load(str(src))
    statistics = norm_statistics(model)
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                     node_block_list=statistics)
    save_onnx(without_round_trips(model), dst)
    return {"kept_fp32": FP16_KEEP_FP32, "norm_statistics_fp32": len(statistics)}


register(Recipe("int8-dynamic", "int8", "INT8 (U8U8) weights, activations quantized at run time (MatMul/Gemm/Conv)",
                 int8_dynamic))
register(Recipe("int8-static", "int8", "INT8 QDQ calibrated on real photos (MatMul/Gemm/Conv, U8U8)",
                 int8_static, needs_calibration=True))
# the full-range U8S8 graphs edgevfm wrote before: faster on VNNI, saturating without it; not
# offered, kept so that python -m edgevfm.benchmarks.isa measures what the defaults avoid
register(Recipe("int8-dynamic-u8s8", "int8", "int8-dynamic with full-range s8 weights (saturates without VNNI)",
                 functools.partial(int8_dynamic, weights="int8"), listed=False))
register(Recipe("int8-static-u8s8", "int8", "int8-static with full-range s8 weights (saturates without VNNI)",
                 functools.partial(int8_static, weights="int8"), needs_calibration=True, listed=False))
register(Recipe("int4", "int4", "4-bit weight-only MatMulNBits, int8 compute", int4))
register(Recipe("fp16", "fp16", "float16 weights and compute, float32 I/O and normalisation", fp16))
# language-model steps: family recipes name them per part (see quantize/families/llava.py)
register(Recipe("int4-mixed", "int4", "4-bit weight-only MLP gate/up projections; attention, down projections, LM "
                 "head and the first and last two layers at 8 bits", int4_mixed, families=("llava", "blip2")))
register(Recipe("int8-weights", "int8", "8-bit weight-only MatMulNBits, every MatMul", int8_weights,
                 families=("llava", "blip2")))
register(Recipe("int4-embed", "int4", "4-bit embedding table (GatherBlockQuantized)", int4_gather,
                 families=("llava", "blip2")))


def register_family_recipe(name: str, family: str, description: str, plan: dict[str, str],
                           listed: bool = True) -> Recipe:
    """A family's own recipe: one existing recipe (or "fp32") per part; ``listed=False`` leaves it
    out of ``--recipe auto`` and the demo (the TensorRT-format ones)."""
    steps = [RECIPES.get(r) for r in plan.values() if r != KEEP]
    precision = "/".join(sorted({s.precision for s in steps} | ({"fp32"} if KEEP in plan.values() else set())))
    backends = sorted({s.backend for s in steps} | ({"onnxruntime"} if KEEP in plan.values() else set()))
    return register(Recipe(name, precision, description, plan=plan, families=(family,),
                            needs_calibration=any(s.needs_calibration for s in steps), backend="/".join(backends),
                            listed=listed))


def recipes_for(family: str, unlisted: bool = False) -> list[str]:
    """Names of the recipes that apply to ``family``'s bundles: the generic ones and its own (with
    ``unlisted``, also those ``--recipe auto`` does not offer: the TensorRT-format ones, controls)."""
    return [name for name, recipe in RECIPES.items()
            if (unlisted or recipe.listed) and (recipe.families is None or family in recipe.families)]


from . import openvino, tensorrt  # noqa: E402,F401  (registers the OpenVINO and TensorRT-format recipes)

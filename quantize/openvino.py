"""OpenVINO recipes: an ONNX part converted to OpenVINO IR (``<part>.xml`` + ``<part>.bin``), then
compressed with NNCF. Every family has them.

- ``ov-fp32`` / ``ov-bf16``: conversion only, FP32 weights stored; the part's precision in the
  manifest sets the precision OpenVINO runs it at (:mod:`edgevfm.runtime.backends`).
- ``ov-int8``: parts that see activations of images or prompts get NNCF's post-training INT8
  (transformer model type, calibrated on the family's feeds, SmoothQuant on or off per part by
  measurement against the FP32 part); where the part's outputs on held-out feeds still fall below
  ``INT8_MIN_COSINE`` of FP32's, NNCF's accuracy control ranks the quantized operations by what
  each costs and returns the most sensitive ones to float until the floor holds (at most
  ``RESTORE_ITERATIONS``; ``quick``, as ``edgevfm demo`` quantizes, skips this step, which takes
  minutes, and tries SmoothQuant only where the part without it misses the floor, and says so),
  and the part records which; a language-model decoder (a part with
  ``past_*`` inputs, driven token by token by the generation engine) gets 8-bit weights instead
  (asymmetric, per channel), as OpenVINO's own LLM pipelines do: static activation ranges from a
  prefill do not fit single-token decode steps.
- ``ov-int8-plain``: the baseline, ``nncf.quantize`` with its defaults, to show what ``ov-int8``
  adds (reports put it beside ``ov-int8``).
- ``ov-int4``: NNCF 4-bit weight compression (symmetric, groups along the input axis, a smaller
  power of two where a layer's width is not a multiple, 8-bit for the layers NNCF keeps as its
  backup: embeddings and the LM head); on decoders data-aware (AWQ and scale estimation on the
  family's prefill feeds). The group size and the share of weights at 4 bits are chosen per part by
  measurement: ``INT4_CANDIDATES`` in order of bits per weight, the first whose outputs on held-out
  feeds stay within the floor ships (decoders: next-token top-1 agreement with FP32 of at least
  ``INT4_MIN_AGREEMENT``; other parts: mean output cosine of at least ``INT4_MIN_COSINE``), else the
  closest of them (a candidate whose groups come out as an earlier one's on this part's layer
  widths is not tried again); ``--block-size`` fixes the group and leaves the share to measure.

onnxruntime-genai's builder graph (LLaVA's default ``llm``) uses ONNX Runtime's own operators
(GroupQueryAttention), which OpenVINO cannot convert: such a part is refused with the fix.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from pathlib import Path

from edgevfm.quantize.errors import QuantizeError
from edgevfm.runtime.errors import MissingExtraError

from .recipes import FULL_RANGE, INT8_ACTIVATIONS, SATURATION_SAFE, Recipe, register

SMOOTH_QUANT_CHECK = 16  # held-out feeds ov-int8 measures its choices with, at most
# ov-int8's bar (mean cosine to FP32 on held-out feeds); where SmoothQuant's choice alone does not
# meet it, accuracy control puts operations back in float (the part's manifest records both)
INT8_MIN_COSINE = 0.999
RESTORE_ITERATIONS = 12  # accuracy control's reverts at most: each costs a validation, a step back a re-ranking
# ov-int4's (group size, share of weights at 4 bits; the rest 8-bit per channel): NNCF's and
# optimum-intel's settings for small LLMs lie among them (128/1.0, 64/0.8, 32/0.8 ...)
INT4_GROUPS = (128, 64, 32)
INT4_RATIOS = (1.0, 0.8)
INT4_MIN_AGREEMENT = 0.95  # decoders: LLaVA's and BLIP's auto floor (a drop of 0.05 in next-token top-1)
INT4_MIN_COSINE = 0.99  # other parts (4-bit weights do not reach ov-int8's 0.999 on ViT towers)
MIN_GROUP = 16  # the smallest group a layer whose width is not a multiple of block_size falls back to


def _openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingExtraError("openvino", "the OpenVINO recipes", exc) from exc
    return ov


def _nncf():
    try:
        import nncf
    except ImportError as exc:
        raise MissingExtraError("export", "the NNCF recipes (ov-int8, ov-int4)", exc) from exc
    return nncf


@contextlib.contextmanager
def quiet_nncf():
    """NNCF prints tables and progress bars of its own for every part; quantize shows its own
    progress over the parts. Errors still surface as exceptions."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def converted(src: Path):
    """The ONNX part as an OpenVINO model, the caller's own copy; a graph with ONNX Runtime's own
    operators is refused. Converting is most of what ``ov-fp32`` costs on small parts (OpenVINO
    validates every node), and each OpenVINO recipe converts the same FP32 part again: parts of
    under ``KEEP_CONVERTED_BYTES`` are converted once per process (a bundle's recipes in a row, the
    demo's tiny models, the tests) and cloned for each use; larger ones are never held."""
    import onnx

    src = Path(src)
    files = sorted(src.parent.glob(src.name + "*"))  # the graph and its external data
    stats = [f.stat() for f in files]
    key = (str(src.resolve()), tuple((f.name, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats)))
    if key in _CONVERTED:
        return _CONVERTED[key].clone()
    foreign = sorted({n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node
                      if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise QuantizeError(f"{src.name} uses ONNX Runtime's own operators {foreign}, which OpenVINO cannot convert: "
                            "export the bundle with --llm-graph plain for the OpenVINO recipes")
    model = _openvino().convert_model(str(src))
    if sum(s.st_size for s in stats) <= KEEP_CONVERTED_BYTES:
        while len(_CONVERTED) >= KEEP_CONVERTED:  # the oldest goes first
            _CONVERTED.pop(next(iter(_CONVERTED)))
        _CONVERTED[key] = model
        return model.clone()
    return model


KEEP_CONVERTED_BYTES = 32 << 20  # a part (graph and weights) this small is converted once per process
KEEP_CONVERTED = 16  # parts held at most
_CONVERTED: dict[tuple, object] = {}


def is_decoder(model) -> bool:
    """A part the generation engine drives step by step: it takes a KV cache (``past_*``)."""
    return any(name.startswith("past_") for port in model.inputs for name in port.get_names())


def _save(model, dst: Path) -> None:
    _openvino().save_model(model, str(dst), compress_to_fp16=False)


def openvino_ir(src: Path, dst: Path, feeds=None, **_) -> dict:
    """The ONNX part converted to OpenVINO IR at ``dst`` (``.xml``, weights in the ``.bin`` beside
    it), FP32 weights kept FP32 (OpenVINO's default would store them FP16)."""
    ov = _openvino()
    _save(converted(src), dst)
    return {"converter": f"openvino {ov.__version__.split('-')[0]}", "weights": "fp32"}


def openvino_int8(src: Path, dst: Path, feeds=None, min_cosine: float = INT8_MIN_COSINE, quick: bool = False,
                  **_) -> dict:
    """NNCF post-training INT8 (transformer model type: softmax and layer norms in float; SmoothQuant
    where it helps this part; the most sensitive operations back to float where the part would
    fall below ``min_cosine``) on the family's feeds; a decoder gets 8-bit weights (see the
    module's notes)."""
    nncf = _nncf()
    model = converted(src)
    if is_decoder(model):
        with quiet_nncf():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        _save(model, dst)
        return {"compressor": f"nncf {nncf.__version__}", "weights": "int8 asymmetric, per channel",
                "activations": "float"}
    held_out = HeldOut(model, list(feeds))
    quantized, chosen = _smooth_quant_by_measurement(nncf, model, held_out, enough=min_cosine if quick else None)
    if chosen["cosine"] < min_cosine and quick:  # accuracy control ranks every quantized operation: minutes
        chosen = dict(chosen, below_floor=min_cosine, accuracy_control="skipped (quick: edgevfm demo)")
    elif chosen["cosine"] < min_cosine:
        quantized, chosen = _sensitive_back_to_float(nncf, model, held_out, quantized, chosen, min_cosine)
    _save(quantized, dst)
    return {"quantizer": f"nncf {nncf.__version__}", "model_type": "transformer", "overflow_fix": "every layer",
            **chosen, INT8_ACTIVATIONS: SATURATION_SAFE}


class HeldOut:
    """The calibration feeds split for measuring a choice: the first three quarters calibrate, the
    last quarter (at most ``SMOOTH_QUANT_CHECK``), which no calibration saw, checks against the FP32
    part's outputs (``reference``); with under 4 feeds, all of them do both."""

    def __init__(self, model, feeds: list[dict]):
        held_out = len(feeds) // 4
        self.calibration, self.check = ((feeds[:-held_out], feeds[-held_out:][:SMOOTH_QUANT_CHECK]) if held_out
                                        else (feeds, feeds))
        self.described = f"{len(self.check)} {'held-out' if held_out else 'calibration'} feeds"
        self.reference = _outputs(model, self.check)
        self.logits = _logits_index(model)

    def cosine(self, model) -> float:
        return mean_cosine(self.reference, _outputs(model, self.check))

    def agreement(self, model) -> float:
        """Next-token top-1 agreement with FP32 over every position of the held-out prefills."""
        import numpy as np

        found = _outputs(model, self.check)
        return float(np.mean([np.mean(np.argmax(ref[self.logits], -1) == np.argmax(out[self.logits], -1))
                              for ref, out in zip(self.reference, found)]))


def _logits_index(model) -> int:
    names = [port.get_names() for port in model.outputs]
    return next((i for i, n in enumerate(names) if any("logits" in name for name in n)), 0)


def _advanced(smooth_quant: str | None = None):
    """NNCF's options with its overflow fix on every layer (7-bit weights: x86 CPUs without VNNI
    saturate with full-range ones; NNCF's default fixes the first layer only); SmoothQuant at NNCF's
    default alpha for the transformer type ("on"), off, or left to NNCF's defaults (None)."""
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    if smooth_quant == "off":
        return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE,
                                              smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)


def _smooth_quant_by_measurement(nncf, model, held_out: HeldOut, enough: float | None = None):
    """NNCF's transformer PTQ of the OpenVINO ``model`` (left as it is) without SmoothQuant and with
    it (NNCF's default alpha), each calibrated on ``held_out.calibration``; keeps the one whose
    outputs on the held-out feeds stay closer to FP32 (mean cosine). SmoothQuant moves activation
    outliers into the weights: on CLIP ViT-B/32 it helps the vision tower a little and hurts the
    text tower on prompts it was not calibrated on, and on most parts of the other families it
    loses; the part's manifest (``recipe.parts.<part>.smooth_quant``) records the cosines. With
    ``enough`` (``quick``: edgevfm demo) it stops at the first setting whose cosine reaches it,
    and says that the other was not tried."""
    tried = {}
    for smooth_quant in ("off", "on"):
        with quiet_nncf():
            quantized = nncf.quantize(model.clone(), nncf.Dataset(held_out.calibration),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(held_out.calibration),
                                      advanced_parameters=_advanced(smooth_quant))
        tried[smooth_quant] = (quantized, held_out.cosine(quantized))
        if enough is not None and tried[smooth_quant][1] >= enough:
            break
    best = max(tried, key=lambda k: tried[k][1])
    found = {"samples": len(held_out.calibration), "smooth_quant": best,
             "smooth_quant_cosine": {k: round(v[1], 6) for k, v in tried.items()},
             "checked_on": held_out.described, "cosine": round(tried[best][1], 6)}
    if len(tried) == 1:
        found["smooth_quant_not_tried"] = f"on (quick: off reached the floor {enough})"
    return tried[best][0], found


def _sensitive_back_to_float(nncf, model, held_out: HeldOut, quantized, chosen: dict, min_cosine: float):
    """NNCF's accuracy control over the chosen quantization: it ranks the quantized operations by the
    cosine each costs on the held-out feeds and returns the worst to float, one group at a time,
    until the part's mean cosine to FP32 reaches ``min_cosine`` (or ``RESTORE_ITERATIONS`` pass).
    The part keeps whichever of the two is closer to FP32, and records what went back to float."""
    import numpy as np
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(compiled, items):  # NNCF compiles each candidate in FP32 itself
        values = []
        for index, feed in items:
            result = compiled(feed)
            found = [np.array(result[port], dtype=np.float64).ravel() for port in compiled.outputs]
            values.append(mean_cosine([held_out.reference[index]], [found]))
        return float(np.mean(values)), values

    with quiet_nncf():
        restored = nncf.quantize_with_accuracy_control(
            model.clone(), nncf.Dataset(held_out.calibration),
            nncf.Dataset(list(enumerate(held_out.check)), lambda item: item[1]), validate,
            max_drop=1 - min_cosine, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(held_out.calibration),
            advanced_quantization_parameters=_advanced(chosen["smooth_quant"]),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=RESTORE_ITERATIONS, ranking_subset_size=len(held_out.check)))
    cosine = held_out.cosine(restored)
    back = sorted(fake_quantized_ops(quantized) - fake_quantized_ops(restored))
    if cosine <= chosen["cosine"] or not back:
        return quantized, dict(chosen, below_floor=min_cosine, kept_in_float=[])
    return restored, dict(chosen, below_floor=min_cosine, cosine=round(cosine, 6), cosine_all_int8=chosen["cosine"],
                          kept_in_float=back)


def fake_quantized_ops(model) -> set[str]:
    """The operations that take a quantized activation (a FakeQuantize feeding them)."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() != "FakeQuantize"
            and any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())}


def _outputs(model, feeds: list[dict]) -> list[list]:
    """The model's outputs on each feed, run in FP32 on the CPU (two threads at most: quantizing
    runs beside other work)."""
    import numpy as np

    compiled = _openvino().Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": 2})
    request = compiled.create_infer_request()
    found = []
    for feed in feeds:
        request.infer(feed)
        found.append([np.array(request.get_output_tensor(i).data, dtype=np.float64)
                      for i in range(len(compiled.outputs))])
    return found


def mean_cosine(reference: list[list], outputs: list[list]) -> float:
    import numpy as np

    cosines = [float(a.ravel() @ b.ravel() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
               for ref, out in zip(reference, outputs) for a, b in zip(ref, out)]
    return float(np.mean(cosines))


def openvino_int8_plain(src: Path, dst: Path, feeds=None, overflow_fix: bool = True, **_) -> dict:
    """The baseline a user tries first: ``nncf.quantize`` with its defaults on the same feeds (no
    model type, so no SmoothQuant and every MatMul quantized, attention's too; decoders as well),
    but for the overflow fix on every layer, without which no INT8 bundle of ours holds on AVX2."""
    nncf = _nncf()
    with quiet_nncf():
        model = nncf.quantize(converted(src), nncf.Dataset(list(feeds)), subset_size=len(feeds),
                              **({"advanced_parameters": _advanced()} if overflow_fix else {}))
    _save(model, dst)
    return {"quantizer": f"nncf {nncf.__version__}", "samples": len(feeds),
            "settings": "defaults, overflow fix on every layer" if overflow_fix else "defaults",
            INT8_ACTIVATIONS: SATURATION_SAFE if overflow_fix else FULL_RANGE}


def openvino_int4(src: Path, dst: Path, feeds=None, block_size: int | None = None, **_) -> dict:
    """NNCF 4-bit weight compression, the group size and the share at 4 bits chosen by measurement
    (see the module's notes); data-aware (AWQ, scale estimation) on decoders."""
    nncf = _nncf()
    model = converted(src)
    decoder = is_decoder(model)
    groups = (block_size,) if block_size else INT4_GROUPS
    candidates = sorted(((g, r) for g in groups for r in INT4_RATIOS), key=lambda c: bits_per_weight(*c))
    settings = {"compressor": f"nncf {nncf.__version__}", "weights": "int4 symmetric",
                "data_aware": "awq, scale estimation" if decoder else False}
    if not feeds:  # nothing to measure with: the most accurate candidate
        group, ratio = candidates[-1]
        _save(_int4(nncf, model, group, ratio, None), dst)
        return dict(settings, group_size=group, ratio=ratio)
    held_out = HeldOut(model, list(feeds))
    measure, floor = ((held_out.agreement, INT4_MIN_AGREEMENT) if decoder else (held_out.cosine, INT4_MIN_COSINE))
    tried, best, seen = {}, None, set()
    for group, ratio in candidates:  # the fewest bits first; the first within the floor ships
        in_effect = (_groups_in_effect(model, group), ratio)
        if in_effect in seen:  # narrow layers: another group size came to the same groups
            continue
        seen.add(in_effect)
        compressed = _int4(nncf, model.clone(), group, ratio, held_out.calibration if decoder else None)
        tried[f"group {group}, ratio {ratio}"] = value = round(measure(compressed), 6)
        if best is None or value > best[0]:
            best = (value, group, ratio, compressed)
        if value >= floor:
            break
    value, group, ratio, compressed = best
    _save(compressed, dst)
    return dict(settings, group_size=group, ratio=ratio, samples=len(held_out.calibration) if decoder else 0,
                measured="next-token top-1 agreement" if decoder else "mean output cosine", floor=floor,
                tried=tried, checked_on=held_out.described,
                chosen="the fewest bits within the floor" if value >= floor else "none within the floor: the closest")


def _groups_in_effect(model, group: int) -> tuple[int, ...]:
    """The group each weight MatMul gets with NNCF's ADJUST fallback: ``group`` where it divides the
    layer's input width, else the width's largest power-of-two divisor."""
    found = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node()
        while weight.get_type_name() == "Convert":
            weight = weight.input_value(0).get_node()
        shape = list(weight.get_output_shape(0)) if weight.get_type_name() == "Constant" else []
        if len(shape) >= 2:
            width = shape[-1] if op.get_attributes().get("transpose_b") else shape[-2]
            found.append(group if width % group == 0 else width & -width)
    return tuple(found)


def bits_per_weight(group: int, ratio: float) -> float:
    """4-bit values with an FP16 scale per group; the rest 8-bit, per channel."""
    return ratio * (4 + 16 / group) + (1 - ratio) * 8


def _int4(nncf, model, group: int, ratio: float, calibration: list[dict] | None):
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    advanced = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                             min_adjusted_group_size=MIN_GROUP)
    data = {}
    if calibration:  # a decoder's prefills: AWQ and scale estimation
        data = dict(dataset=nncf.Dataset(calibration), subset_size=len(calibration), awq=True, scale_estimation=True)
    with quiet_nncf():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group, ratio=ratio,
                                     advanced_parameters=advanced, **data)


register(Recipe("ov-fp32", "fp32", "OpenVINO IR, run in FP32 (the inference precision set explicitly)", openvino_ir,
                 backend="openvino"))
register(Recipe("ov-bf16", "bf16", "OpenVINO IR, run in BF16 where the CPU has it (FP32 weights stored)",
                 openvino_ir, backend="openvino"))
register(Recipe("ov-int8", "int8", "OpenVINO IR, NNCF post-training INT8 (transformer model type) calibrated on "
                 "real photos; 8-bit weights for language-model decoders", openvino_int8, needs_calibration=True,
                 backend="openvino"))
# a step of family plans (SAM's encoder): the same INT8 graph, its float operations (attention,
# norms) run in BF16 where the CPU has it: the SAM report's sam-ov-int8-bf16 row against sam-ov-int8
# (make report) measures what it buys in time and memory.
register(Recipe("ov-int8-bf16", "int8", "OpenVINO IR, NNCF post-training INT8 as ov-int8, float operations in "
                 "BF16 where the CPU has it", openvino_int8, needs_calibration=True, backend="openvino",
                 compute="bf16", listed=False))
register(Recipe("ov-int8-plain", "int8", "baseline: OpenVINO IR, nncf.quantize with its defaults (what a user "
                 "tries first)", openvino_int8_plain, needs_calibration=True, backend="openvino"))
register(Recipe("ov-int8-plain-full-range", "int8", "nncf.quantize with every default, the overflow fix on the "
                 "first layer only (saturates without VNNI): kept to measure", functools.partial(
                     openvino_int8_plain, overflow_fix=False), needs_calibration=True, backend="openvino", listed=False))
register(Recipe("ov-int4", "int4", "OpenVINO IR, NNCF 4-bit weights (8-bit embeddings and LM head), group size "
                 "and 4-bit share by measurement; AWQ and scale estimation on language-model decoders", openvino_int4, needs_calibration=True, backend="openvino"))

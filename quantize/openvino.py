"""OpenVINO recipes: an ONNX part converted to OpenVINO IR (``<part>.xml`` + ``<part>.bin``), then
compressed with NNCF. Every family has them.

- ``ov-fp32`` / ``ov-bf16``: conversion only, FP32 weights stored; the part's precision in the
  manifest sets the precision OpenVINO runs it at (:mod:`edgevfm.runtime.backends`).
- ``ov-int8``: parts that see activations of images or prompts get NNCF's post-training INT8
  (transformer model type, calibrated on the family's feeds, SmoothQuant on or off per part by
  measurement against the FP32 part); a language-model decoder (a part with
  ``past_*`` inputs, driven token by token by the generation engine) gets 8-bit weights instead
  (asymmetric, per channel), as OpenVINO's own LLM pipelines do: static activation ranges from a
  prefill do not fit single-token decode steps.
- ``ov-int8-plain``: the baseline, ``nncf.quantize`` with its defaults, to show what ``ov-int8``
  adds (reports put it beside ``ov-int8``).
- ``ov-int4``: NNCF 4-bit weight compression (symmetric, groups of ``block_size`` along the input
  axis, a smaller power of two where a layer's width is not a multiple, 8-bit for the layers NNCF
  keeps as its backup: embeddings and the LM head); on decoders data-aware (AWQ and scale
  estimation on the family's prefill feeds) with ``INT4_DECODER_RATIO`` of the weights at 4 bits.

onnxruntime-genai's builder graph (LLaVA's default ``llm``) uses ONNX Runtime's own operators
(GroupQueryAttention), which OpenVINO cannot convert: such a part is refused with the fix.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from edgevfm.runtime.errors import MissingExtraError, QuantizeError

from .recipes import Recipe, _register

# the share of a decoder's weights at 4 bits in ov-int4 (the rest at 8): NNCF's and optimum-intel's
# usual setting for small LLMs; not measured here on a trained LLM yet
INT4_DECODER_RATIO = 0.8
SMOOTH_QUANT_CHECK = 16  # held-out feeds ov-int8 measures SmoothQuant on and off with, at most
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
    """The ONNX part as an OpenVINO model; a graph with ONNX Runtime's own operators is refused."""
    import onnx

    foreign = sorted({n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node
                      if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise QuantizeError(f"{src.name} uses ONNX Runtime's own operators {foreign}, which OpenVINO cannot convert: "
                            "export the bundle with --llm-graph plain for the OpenVINO recipes")
    return _openvino().convert_model(str(src))


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


def openvino_int8(src: Path, dst: Path, feeds=None, **_) -> dict:
    """NNCF post-training INT8 (transformer model type: softmax and layer norms in float; SmoothQuant
    where it helps this part) on the family's feeds; a decoder gets 8-bit weights (see the module's
    notes)."""
    nncf = _nncf()
    model = converted(src)
    if is_decoder(model):
        with quiet_nncf():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        _save(model, dst)
        return {"compressor": f"nncf {nncf.__version__}", "weights": "int8 asymmetric, per channel",
                "activations": "float"}
    model, chosen = _smooth_quant_by_measurement(nncf, src, model, list(feeds))
    _save(model, dst)
    return {"quantizer": f"nncf {nncf.__version__}", "model_type": "transformer", **chosen}


def _smooth_quant_by_measurement(nncf, src: Path, model, feeds: list[dict]):
    """NNCF's transformer PTQ with SmoothQuant (its default alpha) and without, each calibrated on the
    first three quarters of ``feeds``; keeps the one whose outputs on the last quarter, which neither
    saw, stay closer to FP32 (mean cosine; with under 4 feeds, on all of them). SmoothQuant moves
    activation outliers into the weights: on CLIP ViT-B/32 it helps the vision tower (0.99978
    against 0.99954 without) and hurts the text tower on prompts it was not calibrated on (0.99870
    against 0.99946; on its calibration prompts both give 0.9995)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    held_out = len(feeds) // 4
    calibration, check = (feeds[:-held_out], feeds[-held_out:][:SMOOTH_QUANT_CHECK]) if held_out else (feeds, feeds)
    reference = _outputs(model, check)
    tried = {}
    for smooth_quant, alpha in (("on", None), ("off", -1)):
        advanced = (AdvancedQuantizationParameters() if alpha is None else
                    AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)))
        with quiet_nncf():
            quantized = nncf.quantize(converted(src), nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(calibration), advanced_parameters=advanced)
        tried[smooth_quant] = (quantized, _mean_cosine(reference, _outputs(quantized, check)))
    best = max(tried, key=lambda k: tried[k][1])
    return tried[best][0], {"samples": len(calibration), "smooth_quant": best,
                            "smooth_quant_cosine": {k: round(v[1], 6) for k, v in tried.items()},
                            "checked_on": f"{len(check)} held-out feeds" if held_out else f"{len(check)} calibration feeds"}


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
        found.append([np.array(request.get_output_tensor(i).data, dtype=np.float64).ravel()
                      for i in range(len(compiled.outputs))])
    return found


def _mean_cosine(reference: list[list], outputs: list[list]) -> float:
    import numpy as np

    cosines = [float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
               for ref, out in zip(reference, outputs) for a, b in zip(ref, out)]
    return float(np.mean(cosines))


def openvino_int8_plain(src: Path, dst: Path, feeds=None, **_) -> dict:
    """The baseline a user tries first: ``nncf.quantize`` with its defaults on the same feeds (no
    model type, so no SmoothQuant and every MatMul quantized, attention's too; decoders as well)."""
    nncf = _nncf()
    with quiet_nncf():
        model = nncf.quantize(converted(src), nncf.Dataset(list(feeds)), subset_size=len(feeds))
    _save(model, dst)
    return {"quantizer": f"nncf {nncf.__version__}", "settings": "defaults", "samples": len(feeds)}


def openvino_int4(src: Path, dst: Path, feeds=None, block_size: int = 32, **_) -> dict:
    """NNCF 4-bit weight compression; data-aware (AWQ, scale estimation) on decoders."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    model = converted(src)
    advanced = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                             min_adjusted_group_size=MIN_GROUP)
    settings = {"compressor": f"nncf {nncf.__version__}", "weights": "int4 symmetric", "group_size": block_size}
    with quiet_nncf():
        if is_decoder(model) and feeds:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=block_size,
                                          ratio=INT4_DECODER_RATIO, dataset=nncf.Dataset(list(feeds)),
                                          subset_size=len(feeds), awq=True, scale_estimation=True,
                                          advanced_parameters=advanced)
            settings.update(ratio=INT4_DECODER_RATIO, data_aware="awq, scale estimation", samples=len(feeds))
        else:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=block_size,
                                          ratio=1.0, advanced_parameters=advanced)
            settings.update(ratio=1.0, data_aware=False)
    _save(model, dst)
    return settings


_register(Recipe("ov-fp32", "fp32", "OpenVINO IR, run in FP32 (the inference precision set explicitly)", openvino_ir,
                 backend="openvino"))
_register(Recipe("ov-bf16", "bf16", "OpenVINO IR, run in BF16 where the CPU has it (FP32 weights stored)",
                 openvino_ir, backend="openvino"))
_register(Recipe("ov-int8", "int8", "OpenVINO IR, NNCF post-training INT8 (transformer model type) calibrated on "
                 "real photos; 8-bit weights for language-model decoders", openvino_int8, needs_calibration=True,
                 backend="openvino"))
# a step of family plans (SAM's encoder): the same INT8 graph, its float operations (attention,
# norms) run in BF16 where the CPU has it. Measured on random:sam-vit-b's encoder (2 threads, AVX-512
# VNNI/BF16): 2017 ms and 0.93 GB peak against 2535 ms and 2.18 GB with them in FP32.
_register(Recipe("ov-int8-bf16", "int8", "OpenVINO IR, NNCF post-training INT8 as ov-int8, float operations in "
                 "BF16 where the CPU has it", openvino_int8, needs_calibration=True, backend="openvino",
                 compute="bf16", listed=False))
_register(Recipe("ov-int8-plain", "int8", "baseline: OpenVINO IR, nncf.quantize with its defaults (what a user "
                 "tries first)", openvino_int8_plain, needs_calibration=True, backend="openvino"))
_register(Recipe("ov-int4", "int4", "OpenVINO IR, NNCF 4-bit weights (8-bit embeddings and LM head); AWQ and scale "
                 "estimation on language-model decoders", openvino_int4, needs_calibration=True, backend="openvino"))

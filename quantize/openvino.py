"""OpenVINO recipes: an ONNX part converted to OpenVINO IR (``<part>.xml`` + ``<part>.bin``), then
compressed with NNCF. Every family has them.

- ``ov-fp32`` / ``ov-bf16``: conversion only, FP32 weights stored; the part's precision in the
  manifest sets the precision OpenVINO runs it at (:mod:`edgevfm.runtime.backends`).
- ``ov-int8``: parts that see activations of images or prompts get NNCF's post-training INT8
  (transformer model type, calibrated on the family's feeds); a language-model decoder (a part with
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
    """NNCF post-training INT8 (transformer model type: SmoothQuant on, softmax and layer norms in
    float) on the family's feeds; a decoder gets 8-bit weights (see the module's notes)."""
    nncf = _nncf()
    model = converted(src)
    if is_decoder(model):
        with quiet_nncf():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        _save(model, dst)
        return {"compressor": f"nncf {nncf.__version__}", "weights": "int8 asymmetric, per channel",
                "activations": "float"}
    with quiet_nncf():
        model = nncf.quantize(model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    _save(model, dst)
    return {"quantizer": f"nncf {nncf.__version__}", "model_type": "transformer", "samples": len(feeds)}


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
_register(Recipe("ov-int8-plain", "int8", "baseline: OpenVINO IR, nncf.quantize with its defaults (what a user "
                 "tries first)", openvino_int8_plain, needs_calibration=True, backend="openvino"))
_register(Recipe("ov-int4", "int4", "OpenVINO IR, NNCF 4-bit weights (8-bit embeddings and LM head); AWQ and scale "
                 "estimation on language-model decoders", openvino_int4, needs_calibration=True, backend="openvino"))

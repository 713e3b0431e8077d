"""LLaVA calibration and recipe.

Calibration: real photos through the bundle's preprocessing for ``vision``; for ``embed`` and
``llm``, prompts about those photos as the runtime builds them (image features merged in, empty
cache), so a calibrated recipe sees the activations of a real prefill.
Recipes, chosen by measurement on ``trained:llava-smol`` (benchmarks/reports/llava-smol):
``llava-int4`` is the one to ship: ``llm`` weight-only MatMulNBits (block 32, RTN), 4 bits for the
MLP gate/up projections and 8 for the rest (measured per choice in :mod:`..recipes`), the embedding
table at 4 bits, the vision tower FP32 (VLM vision towers are known to suffer at INT8, and random
towers cannot show it). ``llava-int8`` puts every LLM MatMul at 8 bits (the accurate one);
``llava-int4-rtn``, every LLM MatMul at 4 bits and the rest FP32, is the plain baseline.
Data-aware 4-bit methods of ONNX Runtime were measured too and not kept (trained:llava-smol, KL to
FP32 with the 8-bit choices above): GPTQ (its vendored neural-compressor port) 1.09, k-quant 0.47
against RTN's 0.40 at all-4-bit; HQQ 0.005, but its float zero points leave the int8-compute kernel
(81 ms/token against 15).
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION

QUESTIONS = ("What is unusual about this image?", "Describe the picture in one sentence.",
             "What colour is the main object?", "How many people are there?")

register_family_recipe("llava-int4", "llava", "LLaVA: 4-bit LLM (MLP gate/up at 4 bits, the rest of it at 8), 4-bit "
                       "embeddings, FP32 vision tower", {"vision": "fp32", "embed": "int4-embed", "llm": "int4-mixed"})
register_family_recipe("llava-int8", "llava", "LLaVA: 8-bit weight-only LLM, 4-bit embeddings, FP32 vision tower",
                       {"vision": "fp32", "embed": "int4-embed", "llm": "int8-weights"})
register_family_recipe("llava-int4-rtn", "llava", "LLaVA: every LLM MatMul 4-bit RTN, FP32 vision tower and embeddings",
                       {"vision": "fp32", "embed": "fp32", "llm": "int4"})


@CALIBRATION.register("llava")
def calibration_feeds(pipeline, images: list, samples: int, captions=(), questions=()) -> dict[str, list[dict]]:
    """Each image in a user turn with a question (a data set's questions where given)."""
    from edgevfm.runtime.families.llava import message

    asked = questions or QUESTIONS
    vision, embed, llm = [], [], []
    for i, image in enumerate(images[:samples]):
        pixels = {"pixel_values": pipeline.image_inputs([image])}
        features = pipeline.run("vision", pixels)["image_features"]
        prompt = pipeline.prompt([message("user", asked[i % len(asked)], with_image=True)], features)
        ids = np.asarray([prompt.ids], np.int64)
        vision.append(pixels)
        embed.append({"input_ids": ids})
        llm.append(pipeline.decoder.prefill_feeds(prompt.embeds[None]))
    return {"vision": vision, "embed": embed, "llm": llm}


calibration_feeds.default_samples = 8
# TensorRT: the LLM's weights as standard DequantizeLinear (trt-int4: 4 bits where int4-mixed puts 4, 8 where it
# puts 8), float16 vision tower and embeddings. Needs the plain llm graph (export --llm-graph plain).
register_family_recipe("llava-trt-int4", "llava", "LLaVA, TensorRT format: 4/8-bit weight-only LLM (trt-int4), FP16 "
                       "vision tower and embeddings", {"vision": "trt-fp16", "embed": "trt-fp16", "llm": "trt-int4"},
                       listed=False)
register_family_recipe("llava-trt-int8", "llava", "LLaVA, TensorRT format: INT8 vision tower (trt-int8), 8-bit weight-only "
                       "LLM (trt-int8-weights), FP16 embeddings",
                       {"vision": "trt-int8", "embed": "trt-fp16", "llm": "trt-int8-weights"}, listed=False)

"""SAM calibration and recipe.

Calibration: real photos through the bundle's own preprocessing for ``image_encoder``; for
``prompt_decoder``, those photos' FP32 embeddings with a handful of random point and box prompts.
Recipe ``sam-int8``: static INT8 encoder (the heavy part, once per image) and FP32 decoder
(the benchmark in benchmarks/reports/sam-vit-b shows why); ``sam-ov-int8``, ``sam-ov-int8-bf16``
and ``sam-ov-bf16`` the same with OpenVINO's encoder.
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION

PROMPTS_PER_IMAGE = 4

register_family_recipe("sam-int8", "sam", "SAM: INT8 static image encoder, FP32 prompt decoder",
                       {"image_encoder": "int8-static", "prompt_decoder": "fp32"})
# The OpenVINO encoder with the FP32 decoder (one bundle, two backends): a BF16 or NNCF INT8 decoder
# flips random weights' near-0 mask logits, as sam-int8's measurements showed for ONNX Runtime, so
# keeping the decoder FP32 is what these recipes add (the SAM report, make report, has every row).
register_family_recipe("sam-ov-int8", "sam", "SAM: OpenVINO NNCF INT8 image encoder, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-int8", "prompt_decoder": "fp32"})
# The same INT8 encoder with its float operations (attention products, softmax, norms) in BF16 where the
# CPU has it, as in ov-bf16; the SAM report's rows give its time, mask IoU and peak memory against
# sam-ov-int8's, and --recipe auto's choice between them.
register_family_recipe("sam-ov-int8-bf16", "sam", "SAM: OpenVINO NNCF INT8 image encoder with its float operations in "
                       "BF16 where the CPU has it, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-int8-bf16", "prompt_decoder": "fp32"})
register_family_recipe("sam-ov-bf16", "sam", "SAM: OpenVINO BF16 image encoder, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-bf16", "prompt_decoder": "fp32"})


@CALIBRATION.register("sam")
def calibration_feeds(predictor, images: list, samples: int, captions=(), questions=()) -> dict[str, list[dict]]:
    """The images only: SAM reads no text (``captions``, ``questions`` are the registry's interface)."""
    from edgevfm.runtime.image import preprocess

    spec = predictor.manifest["preprocessing"]
    encoder = [{"pixel_values": preprocess([image], spec)} for image in images[:samples]]
    decoder, rng = [], np.random.default_rng(0)
    low = predictor.low_res_size
    for image in images[:max(1, samples // 4)]:  # each needs an FP32 encoder run: a quarter suffices
        embedding = predictor.embed(image)
        h, w = embedding.image_size
        points = rng.uniform([0, 0], [w, h], (PROMPTS_PER_IMAGE, 1, 2)).astype(np.float32)
        corners = np.sort(rng.uniform([0, 0], [w, h], (PROMPTS_PER_IMAGE, 2, 2)), axis=1).reshape(-1, 4)
        for boxes in (None, corners.astype(np.float32)):
            coords, labels, prompts = predictor.prompt_points(points, np.ones((PROMPTS_PER_IMAGE, 1), np.float32), boxes,
                                                              image=embedding)
            decoder.append({"image_embeddings": embedding.embeddings, "point_coords": coords, "point_labels": labels,
                            "mask_input": np.zeros((prompts, 1, low, low), np.float32),
                            "has_mask_input": np.zeros(prompts, np.float32)})
    return {"image_encoder": encoder, "prompt_decoder": decoder}


calibration_feeds.default_samples = 8  # each is an encoder run at 1024 x 1024: seconds each at ViT-B size
# TensorRT: the INT8 encoder (Q/DQ as TensorRT fuses them) with the decoder in FP32, for the reason
# sam-int8 keeps it there (its measurement, benchmarks/reports/sam-vit-b).
register_family_recipe("sam-trt-int8", "sam", "SAM, TensorRT format: INT8 image encoder (trt-int8), FP32 prompt decoder",
                       {"image_encoder": "trt-int8", "prompt_decoder": "trt-fp32"}, listed=False)
# FP16 the same way: the encoder in float16, the decoder in FP32. SAM's decoder in FP16 loses mask IoU
# on random weights as INT8 does (the TensorRT report's trt-fp16 row against this one), and NanoSAM
# keeps its decoder in FP32 on the Jetson for the same reason (benchmarks/reports/tensorrt/published-jetson.md).
register_family_recipe("sam-trt-fp16", "sam", "SAM, TensorRT format: FP16 image encoder (trt-fp16), FP32 prompt decoder",
                       {"image_encoder": "trt-fp16", "prompt_decoder": "trt-fp32"}, listed=False)

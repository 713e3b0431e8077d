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
# The OpenVINO encoder with the FP32 decoder (one bundle, two backends). Measured in
# benchmarks/reports/sam-vit-b (make report; random:sam-vit-b, 2 threads, AVX-512 VNNI/BF16): whole-bundle
# ov-int8's encoder 2260 ms at mask IoU 0.961 and ov-bf16's 2688 ms at 0.575, against sam-ov-int8's
# 2207 ms at 0.971 and sam-ov-bf16's 2726 ms at 0.992: a BF16 decoder flips most of random weights'
# near-0 mask logits, NNCF's INT8 decoder some (0.961 against 0.971), as sam-int8's measurements showed
# for ONNX Runtime. Keeping the decoder FP32 is what these recipes add.
register_family_recipe("sam-ov-int8", "sam", "SAM: OpenVINO NNCF INT8 image encoder, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-int8", "prompt_decoder": "fp32"})
# The same INT8 encoder with its float operations (attention products, softmax, norms) in BF16 where the
# CPU has it, as in ov-bf16. In the same report: encoder 1763 ms (3.48x ORT FP32's 6142) at mask IoU
# 0.971 (sam-ov-int8: 2207 ms, 0.971), the encoder run's peak 919 MB against 1349; --recipe auto keeps it.
register_family_recipe("sam-ov-int8-bf16", "sam", "SAM: OpenVINO NNCF INT8 image encoder with its float operations in "
                       "BF16 where the CPU has it, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-int8-bf16", "prompt_decoder": "fp32"})
register_family_recipe("sam-ov-bf16", "sam", "SAM: OpenVINO BF16 image encoder, FP32 prompt decoder (ONNX Runtime)",
                       {"image_encoder": "ov-bf16", "prompt_decoder": "fp32"})


@CALIBRATION.register("sam")
def calibration_feeds(predictor, images: list, samples: int) -> dict[str, list[dict]]:
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


calibration_feeds.default_samples = 8  # each is an encoder run at 1024 x 1024: about 15 s on 2 cores

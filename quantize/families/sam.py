"""SAM calibration and recipe.

Calibration: real photos through the bundle's own preprocessing for ``image_encoder``; for
``prompt_decoder``, those photos' FP32 embeddings with a handful of random point and box prompts.
Recipe ``sam-int8``: static INT8 encoder (the heavy part, once per image) and FP32 decoder
(the benchmark in benchmarks/reports/sam-vit-b shows why).
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION

PROMPTS_PER_IMAGE = 4

register_family_recipe("sam-int8", "sam", "SAM: INT8 static image encoder, FP32 prompt decoder",
                       {"image_encoder": "int8-static", "prompt_decoder": "fp32"})


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

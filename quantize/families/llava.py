"""LLaVA calibration and recipe.

Calibration: real photos through the bundle's preprocessing for ``vision``; for ``embed`` and
``llm``, prompts about those photos as the runtime builds them (image features merged in, empty
cache), so a calibrated recipe sees the activations of a real prefill.
Recipe ``llava-int4``: the recipe people ship, a 4-bit weight-only ``llm`` (MatMulNBits, block 32,
RTN, LM head included) with the vision tower and the embedding table kept FP32 (VLM vision towers
are known to suffer at INT8; the embedding table is a gather, read one row per token).
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION

QUESTIONS = ("What is unusual about this image?", "Describe the picture in one sentence.",
             "What colour is the main object?", "How many people are there?")

register_family_recipe("llava-int4", "llava", "LLaVA: 4-bit weight-only LLM (block 32), FP32 vision tower and embeddings",
                       {"vision": "fp32", "embed": "fp32", "llm": "int4"})


@CALIBRATION.register("llava")
def calibration_feeds(pipeline, images: list, samples: int) -> dict[str, list[dict]]:
    from edgevfm.runtime.families.llava import message

    vision, embed, llm = [], [], []
    for i, image in enumerate(images[:samples]):
        pixels = {"pixel_values": pipeline.image_inputs([image])}
        features = pipeline.run("vision", pixels)["image_features"]
        prompt = pipeline.prompt([message("user", QUESTIONS[i % len(QUESTIONS)], with_image=True)], features)
        ids = np.asarray([prompt.ids], np.int64)
        vision.append(pixels)
        embed.append({"input_ids": ids})
        feeds = {"inputs_embeds": prompt.embeds[None], "attention_mask": np.ones_like(ids),
                 "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
        for name in pipeline.decoder.past_names:
            feeds[name] = np.zeros((1, pipeline.decoder.kv_heads, 0, pipeline.decoder.head_dim), np.float32)
        llm.append(feeds)
    return {"vision": vision, "embed": embed, "llm": llm}


calibration_feeds.default_samples = 8

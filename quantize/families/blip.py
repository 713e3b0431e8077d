"""BLIP calibration and recipe.

``blip-int8``, chosen per part by measurement on random:blip-base (benchmarks/reports/blip-base,
2 threads; the generic recipes on every part): the vision encoder takes 233 ms in static INT8
against 288 in dynamic INT8 (685 in PyTorch), while the text decoder's 20 steps take about 80 ms
more in static INT8 than in dynamic (a whole caption 531 against 507 ms), so the vision encoder is
static (calibrated on photos) and every other part dynamic. INT4 weight-only and FP16 were slower
and, at 4 bits, far from FP32 (71% next-token agreement).

Calibration: real photos through the bundle's preprocessing for ``vision``; their image
embeddings for ``cross_kv``; for ``text_decoder``, a caption prefill ("[DEC] a picture of") with
the photo's cross-attention keys and values, as the runtime feeds it. A VQA bundle's ``question``
part sees questions about the photos, and ``cross_kv`` and the decoder their states.
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION


register_family_recipe("blip-int8", "blip", "BLIP: static INT8 vision encoder (calibrated), dynamic INT8 text "
                       "decoder, cross keys/values, question encoder and retrieval heads",
                       {"vision": "int8-static", "cross_kv": "int8-dynamic", "text_decoder": "int8-dynamic",
                        "question": "int8-dynamic", "itm": "int8-dynamic", "image_proj": "int8-dynamic",
                        "text_proj": "int8-dynamic"})

TEXTS = ("a photo of a cat", "an astronaut in a space suit", "a cup of coffee on a table", "a rocket on the pad")
QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?", "is it outside?")


@CALIBRATION.register("blip")
def calibration_feeds(pipeline, images: list, samples: int) -> dict[str, list[dict]]:
    from edgevfm.runtime.image import preprocess

    if pipeline.manifest["task"] == "retrieval":
        return _retrieval_feeds(pipeline, images[:samples])
    vqa = pipeline.manifest["task"] == "vqa"
    feeds: dict[str, list[dict]] = {"vision": [], "cross_kv": [], "text_decoder": []} | ({"question": []} if vqa else {})
    for i, image in enumerate(images[:samples]):
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        embeds = pipeline.run("vision", pixels)["image_embeds"]
        feeds["vision"].append(pixels)
        if vqa:  # the question part sees the image; cross_kv and the decoder see the question's states
            ids = np.asarray([pipeline.tokenizer.encode(QUESTIONS[i % len(QUESTIONS)]).ids], np.int64)
            question = {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": embeds}
            feeds["question"].append(question)
            states = {"question_embeds": pipeline.run("question", question)["question_embeds"]}
            start = [pipeline.text["bos_token_id"]]
        else:
            states = {"image_embeds": embeds}
            start = pipeline.prompt_ids("a picture of")
        feeds["cross_kv"].append(states)
        keys_values = pipeline.run("cross_kv", states)
        feeds["text_decoder"].append(pipeline.decoder.with_constants(keys_values).prefill_feeds(
            np.asarray([start], np.int64)))
    return feeds


calibration_feeds.default_samples = 8


def _retrieval_feeds(pipeline, images: list) -> dict[str, list[dict]]:
    """ITM and ITC: each photo with a caption-like text, as ``match`` feeds them."""
    from edgevfm.runtime.image import preprocess

    feeds: dict[str, list[dict]] = {"vision": [], "itm": [], "image_proj": [], "text_proj": []}
    for i, image in enumerate(images):
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        embeds = pipeline.run("vision", pixels)["image_embeds"]
        ids = np.asarray([pipeline.tokenizer.encode(TEXTS[i % len(TEXTS)]).ids], np.int64)
        text = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds["vision"].append(pixels)
        feeds["itm"].append(text | {"image_embeds": embeds})
        feeds["image_proj"].append({"image_embeds": embeds})
        feeds["text_proj"].append(text)
    return feeds

"""BLIP calibration (work in progress: no family recipe yet; the generic recipes apply to every
part until measurement picks one per part).

Calibration: real photos through the bundle's preprocessing for ``vision``; their image
embeddings for ``cross_kv``; for ``text_decoder``, a caption prefill ("[DEC] a picture of") with
the photo's cross-attention keys and values, as the runtime feeds it. A VQA bundle's ``question``
part sees questions about the photos, and ``cross_kv`` and the decoder their states.
"""

from __future__ import annotations

import numpy as np

from . import CALIBRATION


QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?", "is it outside?")


@CALIBRATION.register("blip")
def calibration_feeds(pipeline, images: list, samples: int) -> dict[str, list[dict]]:
    from edgevfm.runtime.image import preprocess

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

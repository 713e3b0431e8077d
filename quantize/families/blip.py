"""BLIP calibration (no family recipe: measurement picked a generic one for every part).

Measured on random:blip-base (benchmarks/reports/blip-base, 2 threads, a quiet machine): dynamic
INT8 (``int8-dynamic``) is the fastest choice for each part: vision 224 ms against 230 static
(567 FP32, 693 PyTorch), a whole caption 491 ms against 501 static, at 100% next-token agreement
where FP32 is clear. A per-part mix (static vision, dynamic elsewhere) measured 622 ms against
565 for dynamic everywhere in the same earlier run, so it is not kept (a first run, beside a test
suite, had put static vision at 233 ms against 288: the noise the OpenVINO issue's interleaved
rounds are for). INT4 weight-only and FP16 were slower, and 4 bits far from FP32 (73% agreement).

Calibration: real photos through the bundle's preprocessing for ``vision``; their image
embeddings for ``cross_kv``; for ``text_decoder``, a caption prefill ("[DEC] a picture of") with
the photo's cross-attention keys and values, as the runtime feeds it. A VQA bundle's ``question``
part sees questions about the photos, and ``cross_kv`` and the decoder their states.
"""

from __future__ import annotations

import numpy as np

from . import CALIBRATION


TEXTS = ("a photo of a cat", "an astronaut in a space suit", "a cup of coffee on a table", "a rocket on the pad")
QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?", "is it outside?")


@CALIBRATION.register("blip")
def calibration_feeds(pipeline, images: list, samples: int, captions=(), questions=()) -> dict[str, list[dict]]:
    """A data set's captions (the decoder prefilled with the whole caption; retrieval pairs each
    image with its own) or questions replace :data:`TEXTS` and :data:`QUESTIONS` where given."""
    from edgevfm.runtime.image import preprocess

    if pipeline.manifest["task"] == "retrieval":
        return _retrieval_feeds(pipeline, images[:samples], list(captions) or TEXTS)
    vqa = pipeline.manifest["task"] == "vqa"
    feeds: dict[str, list[dict]] = {"vision": [], "cross_kv": [], "text_decoder": []} | ({"question": []} if vqa else {})
    for i, image in enumerate(images[:samples]):
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        embeds = pipeline.run("vision", pixels)["image_embeds"]
        feeds["vision"].append(pixels)
        if vqa:  # the question part sees the image; cross_kv and the decoder see the question's states
            asked = questions or QUESTIONS
            ids = np.asarray([pipeline.tokenizer.encode(asked[i % len(asked)]).ids], np.int64)
            question = {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": embeds}
            feeds["question"].append(question)
            states = {"question_embeds": pipeline.run("question", question)["question_embeds"]}
            start = [pipeline.text["bos_token_id"]]
        else:
            states = {"image_embeds": embeds}
            start = pipeline.prompt_ids(captions[i % len(captions)] if captions else "a picture of")
        feeds["cross_kv"].append(states)
        keys_values = pipeline.run("cross_kv", states)
        feeds["text_decoder"].append(pipeline.decoder.with_constants(keys_values).prefill_feeds(
            np.asarray([start], np.int64)))
    return feeds


calibration_feeds.default_samples = 8


def _retrieval_feeds(pipeline, images: list, texts) -> dict[str, list[dict]]:
    """ITM and ITC: each photo with a caption-like text, as ``match`` feeds them."""
    from edgevfm.runtime.image import preprocess

    feeds: dict[str, list[dict]] = {"vision": [], "itm": [], "image_proj": [], "text_proj": []}
    for i, image in enumerate(images):
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        embeds = pipeline.run("vision", pixels)["image_embeds"]
        ids = np.asarray([pipeline.tokenizer.encode(texts[i % len(texts)]).ids], np.int64)
        text = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds["vision"].append(pixels)
        feeds["itm"].append(text | {"image_embeds": embeds})
        feeds["image_proj"].append({"image_embeds": embeds})
        feeds["text_proj"].append(text)
    return feeds

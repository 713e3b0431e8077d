"""BLIP calibration (work in progress: no family recipe yet; the generic recipes apply to every
part until measurement picks one per part).

Calibration: real photos through the bundle's preprocessing for ``vision``; their image
embeddings for ``cross_kv``; for ``text_decoder``, a caption prefill ("[DEC] a picture of") with
the photo's cross-attention keys and values, as the runtime feeds it.
"""

from __future__ import annotations

import numpy as np

from . import CALIBRATION


@CALIBRATION.register("blip")
def calibration_feeds(pipeline, images: list, samples: int) -> dict[str, list[dict]]:
    from edgevfm.runtime.image import preprocess

    vision, cross, decoder = [], [], []
    for image in images[:samples]:
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        embeds = pipeline.run("vision", pixels)["image_embeds"]
        keys_values = pipeline.run("cross_kv", {"image_embeds": embeds})
        ids = np.asarray([pipeline.prompt_ids("a picture of")], np.int64)
        vision.append(pixels)
        cross.append({"image_embeds": embeds})
        decoder.append(pipeline.decoder.with_constants(keys_values).prefill_feeds(ids))
    return {"vision": vision, "cross_kv": cross, "text_decoder": decoder}


calibration_feeds.default_samples = 8

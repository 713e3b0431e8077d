"""BLIP-2 calibration and recipes.

Calibration: real photos through the bundle's preprocessing for ``vision``; for ``embed`` and
``llm``, each photo's prompt as the runtime builds it (query features, BOS, a question in
BLIP-2's "Question: ... Answer:" form), prefilled with an empty cache. A T5 bundle's ``encoder``
sees those prompts, ``cross_kv`` their encoder states, and ``text_decoder`` its start token
against them.

Recipes: the ViT-g and Q-Former hold most of the weights and compute (1.1 of 1.5 B parameters at
blip2-opt-350m): they get INT8 with activations quantized at run time (``int8-dynamic``, the
faster and closer to FP32 of the generic INT8 recipes on BLIP's ViT-B, benchmarks/reports/blip-base);
the OPT language model gets the LLaVA issue's weight-only recipes (8 bits, or 4 bits where it
costs least) and the 4-bit embedding table. A T5 (Flan-T5) bundle's encoder, cross keys/values and
decoder get 8-bit weights, or in ``blip2-int4`` a 4-bit decoder (``int4-mixed`` keeps its LM head at
8 bits; its other 8-bit patterns name OPT's and Llama's layers) — not measured on trained Flan-T5
weights, which are not at hand.
"""

from __future__ import annotations

import numpy as np

from ..recipes import register_family_recipe
from . import CALIBRATION
from .blip import TEXTS

QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?", "is it outside?")

T5_PARTS = {"encoder": "int8-weights", "cross_kv": "int8-weights", "text_decoder": "int8-weights"}
# a retrieval bundle (Blip2ForImageTextRetrieval) has no language model: its Q-Former text paths as the vision
RETRIEVAL_PARTS = {"text": "int8-dynamic", "itm": "int8-dynamic"}
register_family_recipe("blip2-int8", "blip2", "BLIP-2: INT8 vision (ViT, Q-Former; dynamic), 8-bit weight-only "
                       "language model, 4-bit embeddings (retrieval: every part INT8 dynamic)",
                       {"vision": "int8-dynamic", "embed": "int4-embed", "llm": "int8-weights", **T5_PARTS,
                        **RETRIEVAL_PARTS})
register_family_recipe("blip2-int4", "blip2", "BLIP-2: INT8 vision (ViT, Q-Former; dynamic), 4-bit language model "
                       "(MLP at 4 bits, attention, fc2, LM head and the edge layers at 8), 4-bit embeddings "
                       "(retrieval: as blip2-int8)",
                       {"vision": "int8-dynamic", "embed": "int4-embed", "llm": "int4-mixed",
                        **T5_PARTS, "text_decoder": "int4-mixed", **RETRIEVAL_PARTS})


@CALIBRATION.register("blip2")
def calibration_feeds(pipeline, images: list, samples: int, captions=(), questions=()) -> dict[str, list[dict]]:
    """Each image with a question in the bundle's template (a data set's questions where given); a
    retrieval bundle's image with a caption-like text (a data set's captions where given), as
    ``match`` feeds them."""
    if pipeline.manifest.get("task") == "retrieval":
        return _retrieval_feeds(pipeline, images[:samples], list(captions) or list(TEXTS))
    template = pipeline.manifest["prompt"]["question_template"]
    asked = questions or QUESTIONS
    feeds: dict[str, list[dict]] = {name: [] for name in pipeline.parts}
    for i, image in enumerate(images[:samples]):
        feeds["vision"].append({"pixel_values": pipeline.image_inputs([image])})
        prompt = pipeline.prompt(image, template.format(asked[i % len(asked)]))
        feeds["embed"].append({"input_ids": np.asarray([prompt.ids], np.int64)})
        if not pipeline.seq2seq:
            feeds["llm"].append(pipeline.decoder.prefill_feeds(prompt.embeds[None]))
            continue
        encoder = {"inputs_embeds": prompt.embeds[None], "attention_mask": np.ones((1, len(prompt.ids)), np.int64)}
        feeds["encoder"].append(encoder)
        feeds["cross_kv"].append({"encoder_states": pipeline.run("encoder", encoder)["encoder_states"]})
        decoder = pipeline.encoded(prompt)
        start = [[pipeline.manifest["llm"]["decoder_start_token_id"]]]
        feeds["text_decoder"].append(decoder.prefill_feeds(np.asarray(start, np.int64)))
    return feeds


calibration_feeds.default_samples = 8


def _retrieval_feeds(pipeline, images: list, texts: list[str]) -> dict[str, list[dict]]:
    from edgevfm.runtime.image import preprocess

    feeds: dict[str, list[dict]] = {"vision": [], "text": [], "itm": []}
    for i, image in enumerate(images):
        pixels = {"pixel_values": preprocess([image], pipeline.manifest["preprocessing"])}
        feeds["vision"].append(pixels)
        ids = pipeline.encode(texts[i % len(texts)], "text")
        text = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds["text"].append(text)
        feeds["itm"].append(text | {"image_embeds": pipeline.run("vision", pixels)["image_embeds"]})
    return feeds
# TensorRT: 4/8-bit weight-only language model (trt-int4), FP16 ViT, Q-Former and embeddings;
# a T5 bundle's encoder and cross keys/values in FP16 and its decoder at 4 bits.
register_family_recipe("blip2-trt-int4", "blip2", "BLIP-2, TensorRT format: 4/8-bit weight-only language model "
                       "(trt-int4), FP16 vision and embeddings", {"vision": "trt-fp16", "embed": "trt-fp16", "llm": "trt-int4",
                                                              "encoder": "trt-fp16", "cross_kv": "trt-fp16",
                                                              "text_decoder": "trt-int4"}, listed=False)
register_family_recipe("blip2-trt-int8", "blip2", "BLIP-2, TensorRT format: INT8 vision (trt-int8), 8-bit weight-only "
                       "language model (trt-int8-weights), FP16 embeddings",
                       {"vision": "trt-int8", "embed": "trt-fp16", "llm": "trt-int8-weights", "encoder": "trt-int8-weights",
                        "cross_kv": "trt-int8-weights", "text_decoder": "trt-int8-weights"}, listed=False)

"""BLIP-2 captioning benchmark: BLIP's (:mod:`.blip`) measurements over BLIP-2's runners.

Latency: ``vision`` (ViT, Q-Former, projection) and a whole caption of ``CAPTION_TOKENS`` tokens
(no early stop). Accuracy against the FP32 PyTorch model: caption agreement, and teacher-forced
next-token agreement and KL along a fixed caption after the image's query tokens, overall and
where the FP32 top-1 margin is clear.
"""

from __future__ import annotations

import numpy as np

from . import BENCH
from .blip import CAPTION_TOKENS, REFERENCE_CAPTION, BlipBench


@BENCH.register("blip2")
class Blip2Bench(BlipBench):
    demo_recipes = ("blip2-int8", "blip2-int4", "int8-dynamic")

    task = "caption"

    def torch_runner(self, checkpoint):
        return _TorchBlip2(checkpoint)

    @staticmethod
    def check_bundles(bundles) -> None:
        """Every BLIP-2 bundle captions: nothing to refuse."""

    def bundle_runner(self, pipeline):
        return _BundleBlip2(pipeline)


class _TorchBlip2:
    """The FP32 PyTorch reference: transformers' processor and generate."""

    def __init__(self, checkpoint):
        import torch

        self.torch, self.model = torch, checkpoint.model
        self.processor, self.tokenizer = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"]
        self.queries = [self.model.config.image_token_id] * self.model.config.num_query_tokens

    def pixels(self, image):
        from edgevfm.runtime.image import load_image

        return self.processor([np.asarray(load_image(image))], return_tensors="pt")["pixel_values"]

    def calls(self, image):
        torch, model, pixels = self.torch, self.model, self.pixels(image)

        def vision():
            with torch.inference_mode():
                return model.get_image_features(pixel_values=pixels)

        def caption():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, max_new_tokens=CAPTION_TOKENS,
                                      min_new_tokens=CAPTION_TOKENS)

        return {"vision": vision, "caption": caption}, ("tokens", CAPTION_TOKENS, caption)

    def generated(self, image, index: int) -> list[int]:
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=self.pixels(image), max_new_tokens=CAPTION_TOKENS)
        out = out[0, len(self.queries) + 1:].tolist()  # after the image tokens and BOS
        return out[:-1] if out and out[-1] == self.model.config.text_config.eos_token_id else out

    def teacher_logits(self, image, index: int) -> np.ndarray:
        ids = self.torch.tensor([self.queries + self.tokenizer(REFERENCE_CAPTION).input_ids])
        with self.torch.inference_mode():
            logits = self.model(pixel_values=self.pixels(image), input_ids=ids).logits
        return logits[0, len(self.queries):].float().numpy()


class _BundleBlip2:
    def __init__(self, pipeline):
        self.p = pipeline

    def calls(self, image):
        p = self.p
        pixels = {"pixel_values": p.image_inputs([image])}

        def caption():
            return p.caption_tokens([image], max_new_tokens=CAPTION_TOKENS, stop_token_ids=())

        return {"vision": lambda: p.run("vision", pixels), "caption": caption}, ("tokens", CAPTION_TOKENS, caption)

    def generated(self, image, index: int) -> list[int]:
        return self.p.caption_tokens([image], max_new_tokens=CAPTION_TOKENS)[0]

    def teacher_logits(self, image, index: int) -> np.ndarray:
        prompt = self.p.prompt(image, REFERENCE_CAPTION)
        length = len(prompt.ids)
        decoder = self.p.decoder
        _, logits, _ = decoder.step(prompt.embeds[None], np.ones((1, length), np.int64), np.arange(length)[None],
                                    decoder.empty_cache(1))
        return logits[0, self.p.image_seq_length:]

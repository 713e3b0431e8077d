"""BLIP captioning on a three-part bundle (``vision``, ``cross_kv``, ``text_decoder``): a caption
starts with ``[DEC]`` (the decoder's start token) and an optional prompt, as transformers'
``BlipForConditionalGeneration.generate`` does, and ends at ``[SEP]``."""

from __future__ import annotations

import numpy as np

from ..generate import generate
from ..image import ImageLike
from ..sampling import fitted
from ..tasks import Task, decoding_arguments, decoding_options, register_task
from ..video import frames_argument, video_options
from .blip import CAPTION_TOKENS, BlipDecoding, task_pipeline


@task_pipeline("caption")
class BlipCaptionPipeline(BlipDecoding):
    task_parts = {"cross_kv": (("image_embeds",), ()),
                  "text_decoder": (("input_ids", "attention_mask", "position_ids"), ("logits",))}

    def caption(self, image: ImageLike, prompt: str | None = None, **generation) -> str:
        """The caption of ``image`` (continuing ``prompt`` if given; the prompt is part of the text,
        as transformers decodes it): greedy by default, ``do_sample``/``num_beams`` as the engine."""
        return self.caption_batch([image], prompt, **generation)[0]

    def caption_batch(self, images, prompt: str | None = None, **generation) -> list[str]:
        captions = self.caption_tokens(images, prompt, **generation)
        start = self.prompt_ids(prompt)[1:]  # the prompt is part of the caption, as transformers decodes it
        return [self.tokenizer.decode(start + tokens, skip_special_tokens=True) for tokens in captions]

    def caption_tokens(self, images, prompt: str | None = None, **generation) -> list[list[int]]:
        """The generated token ids of each image's caption (the prompt's and ``[SEP]`` excluded)."""
        config = self.generation.with_options(**generation)
        ids = self.prompt_ids(prompt)
        config = fitted(config, len(ids), self.text["context_length"])
        prompts = [np.asarray(ids, np.int64)] * len(images)
        result = generate(self.image_decoder(images), lambda tokens: tokens, prompts, [ids] * len(images), config)
        return result.tokens

    def image_decoder(self, images):
        """The text decoder bound to these images' cross-attention keys and values (one per row)."""
        return self.attending_to({"image_embeds": self.image_embeds(images)})


def _caption_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image to caption (BLIP-2: or a video)")
    parser.add_argument("--prompt", help="the caption's start, which the model continues (\"a picture of\")")
    decoding_arguments(parser, max_new_tokens=CAPTION_TOKENS)
    frames_argument(parser)


def _caption(pipeline, args) -> None:
    print(pipeline.caption(args.image, args.prompt, **video_options(pipeline, args.image, args.frames),
                           **decoding_options(args)))


# BLIP-2's pipeline answers the same call (runtime/families/blip2.py)
register_task(Task("caption", ("blip", "blip2"), "a caption of IMAGE (--prompt to start it, --beams N for beam search)",
                   _caption_arguments, _caption))

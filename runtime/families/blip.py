"""BLIP captioning on a three-part bundle (``vision``, ``cross_kv``, ``text_decoder``) and the
shared generation engine (work in progress: VQA, ITM/ITC and retrieval still to come).

The image's cross-attention keys and values are computed once (``cross_kv``) and bound to the
decoder as constants for the whole caption; the decoder takes token ids (it embeds them itself).
A caption starts with ``[DEC]`` (the decoder's start token) and an optional prompt, as
transformers' ``BlipForConditionalGeneration.generate`` does, and ends at ``[SEP]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..generate import GenerationConfig, KVDecoder, check_prompt_fits, generate
from ..image import PREPROCESSING, ImageLike, preprocess
from ..pipeline import PIPELINES, Pipeline
from ..schema import integer, listed_file, obj
from ..tasks import Task, positive_int, register_task

_ID = integer(0, 1 << 24)


@PIPELINES.register("blip")
class BlipPipeline(Pipeline):
    family = "blip"
    needs = {
        "vision": (("pixel_values",), ("image_embeds",)),
        "cross_kv": (("image_embeds",), ()),
        "text_decoder": (("input_ids", "attention_mask", "position_ids"), ("logits",)),
    }
    manifest_schema = {
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file()}),
        "text": obj({"num_layers": integer(1, 1024), "heads": integer(1, 1024), "head_dim": integer(1, 4096),
                     "vocab_size": integer(1, 1 << 24), "context_length": integer(1, 1 << 20), "bos_token_id": _ID,
                     "sep_token_id": _ID, "pad_token_id": _ID}),
    }

    def setup(self):
        from tokenizers import Tokenizer

        settings, text = self.manifest["tokenizer"], self.manifest["text"]
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(settings["file"])))
        except Exception as exc:
            raise ValueError(f"its tokenizer file {settings['file']!r} cannot be read ({exc})") from None
        self.text = text
        self.decoder = KVDecoder(self.parts["text_decoder"], text["num_layers"], text["heads"], text["head_dim"],
                                 token_input="input_ids")
        self.generation = GenerationConfig(max_new_tokens=30, stop_token_ids=(text["sep_token_id"],))

    def image_embeds(self, images) -> np.ndarray:
        pixels = preprocess(list(images), self.manifest["preprocessing"])
        return self.run("vision", {"pixel_values": pixels})["image_embeds"]

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """``[DEC]`` and the prompt's tokens (no ``[CLS]``/``[SEP]``), as transformers feeds the decoder."""
        if prompt is None:
            return [self.text["bos_token_id"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"a caption prompt must be a non-empty string or None, found {prompt!r}")
        return [self.text["bos_token_id"]] + self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def caption(self, image: ImageLike, prompt: str | None = None, **generation) -> str:
        """The caption of ``image`` (continuing ``prompt`` if given; the prompt is part of the text,
        as transformers decodes it): greedy by default, ``do_sample``/``num_beams`` as the engine."""
        return self.caption_batch([image], prompt, **generation)[0]

    def caption_batch(self, images, prompt: str | None = None, **generation) -> list[str]:
        ids = self.prompt_ids(prompt)
        return [self.tokenizer.decode(ids[1:] + tokens, skip_special_tokens=True)
                for tokens in self.caption_tokens(images, prompt, **generation)]

    def caption_tokens(self, images, prompt: str | None = None, **generation) -> list[list[int]]:
        """The generated token ids of each image's caption (the prompt's and ``[SEP]`` excluded)."""
        config = self.generation.with_options(**generation)
        ids = self.prompt_ids(prompt)
        check_prompt_fits(len(ids), config.max_new_tokens, self.text["context_length"])
        prompts = [np.asarray(ids, np.int64)] * len(images)
        result = generate(self.image_decoder(images), lambda tokens: tokens, prompts, [ids] * len(images), config)
        return result.tokens

    def image_decoder(self, images):
        """The text decoder bound to these images' cross-attention keys and values (one per row)."""
        cross = self.run("cross_kv", {"image_embeds": self.image_embeds(images)})
        return self.decoder.with_constants({name: cross[name] for name in self._cross_names()})

    def _cross_names(self) -> list[str]:
        return [f"cross_{kv}.{i}" for i in range(self.text["num_layers"]) for kv in ("key", "value")]


# -- the command line -------------------------------------------------------------------------
def _caption_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image to caption")
    parser.add_argument("--prompt", help="the caption's start, which the model continues (\"a picture of\")")
    parser.add_argument("--beams", type=positive_int, default=1, help="beam search with this many beams (default 1: "
                        "greedy)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=30)


def _caption(pipeline: BlipPipeline, args) -> None:
    print(pipeline.caption(args.image, args.prompt, num_beams=args.beams, max_new_tokens=args.max_new_tokens))


register_task(Task("caption", "blip", "a caption of IMAGE (--prompt to start it, --beams N for beam search)",
                   _caption_arguments, _caption))

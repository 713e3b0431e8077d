"""BLIP-2 captions and answers on a three-part bundle (``vision``: ViT + Q-Former + projection,
``embed``, ``llm``) and the shared generation engine, as :mod:`..vision_lm` runs LLaVA.

A prompt is ``image_seq_length`` image tokens (their embeddings replaced by the image's query
features), then BOS (where the tokenizer adds it) and the text, as transformers' Blip2Processor
builds it; a caption has no text, an answer the prompt "Question: {question} Answer:". The
command line's ``caption`` and ``ask`` tasks are BLIP's (:mod:`.blip`), the same calls.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InputError
from ..image import PREPROCESSING, ImageLike
from ..pipeline import PIPELINES
from ..schema import boolean, integer, list_of, listed_file, obj, string
from ..vision_lm import LLM_SECTION, Prompt, VisionLanguagePipeline

from .blip import ANSWER_TOKENS, CAPTION_TOKENS

_ID = integer(0, 1 << 24)


@PIPELINES.register("blip2")
class Blip2Pipeline(VisionLanguagePipeline):
    family = "blip2"
    manifest_schema = {
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file(), "bos_token_id": _ID, "add_bos": boolean()}),
        "prompt": obj({"image_token_id": _ID, "image_seq_length": integer(1, 4096),
                       "stop_token_ids": list_of(_ID, max_items=16), "question_template": string(max_length=1000)}),
        "llm": LLM_SECTION,
    }

    @classmethod
    def check_consistency(cls, manifest):
        template = manifest["prompt"]["question_template"]
        problems = [] if template.count("{}") == 1 else [
            f"manifest.prompt.question_template must hold one '{{}}' for the question, found {template!r}"]
        return problems + cls.check_text(manifest, manifest["prompt"]["image_seq_length"])

    def setup(self):
        prompt = self.manifest["prompt"]
        self.setup_text(prompt["image_token_id"], prompt["image_seq_length"], prompt["stop_token_ids"], CAPTION_TOKENS)

    def prompt(self, image: ImageLike, text: str | None = None) -> Prompt:
        """The image's query features, then BOS and ``text`` (none for a caption)."""
        settings = self.manifest["tokenizer"]
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise InputError(f"a prompt must be a non-empty string or None, found {text!r}")
        ids = [self.image_token_id] + ([settings["bos_token_id"]] if settings["add_bos"] else [])
        if text is not None:
            ids += self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.merge(ids, self.image_features([image]))

    def caption(self, image: ImageLike, prompt: str | None = None, **generation) -> str:
        """The caption of ``image`` (continuing ``prompt`` if given): greedy by default,
        ``do_sample``/``num_beams`` as the engine takes them."""
        return self.caption_batch([image], prompt, **generation)[0]

    def caption_batch(self, images: Sequence[ImageLike], prompt: str | None = None, **generation) -> list[str]:
        config = self.generation.with_options(**generation)
        return [text.strip() for text in self.complete([self.prompt(image, prompt) for image in images], config)]

    def caption_tokens(self, images: Sequence[ImageLike], prompt: str | None = None, **generation) -> list[list[int]]:
        """The generated token ids of each image's caption (the prompt's and the stop token excluded)."""
        config = self.generation.with_options(**generation)
        return self.continuations([self.prompt(image, prompt) for image in images], config)

    def answer(self, image: ImageLike, question: str, **generation) -> str:
        """The answer to ``question`` about ``image``, prompted as BLIP-2 was trained:
        "Question: {question} Answer:"."""
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"a question must be a non-empty string, found {question!r}")
        config = self.generation.with_options(**({"max_new_tokens": ANSWER_TOKENS} | generation))
        text = self.manifest["prompt"]["question_template"].format(question.strip())
        return self.complete([self.prompt(image, text)], config)[0].strip()

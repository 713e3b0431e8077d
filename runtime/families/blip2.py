"""BLIP-2 captions and answers on the shared generation engine, with either language model.

- OPT (decoder-only): ``vision`` (ViT + Q-Former + projection), ``embed``, ``llm``, run as
  :mod:`..vision_lm` runs LLaVA: the prompt's embeddings go through ``llm``.
- Flan-T5 (encoder-decoder): ``vision``, ``embed``, ``encoder``, ``cross_kv``, ``text_decoder``: the
  prompt's embeddings go through ``encoder`` once, ``cross_kv`` makes each decoder layer's keys and
  values of its states, and the engine drives ``text_decoder`` from the decoder's start token with
  those (and the encoder's mask) bound as per-generation constants, as BLIP's decoder.

A prompt is ``image_seq_length`` image tokens (their embeddings replaced by the image's query
features), then the text with BOS (OPT) or EOS (T5) where the tokenizer adds them, as
transformers' Blip2Processor builds it; a caption has no text, an answer the prompt
"Question: {question} Answer:". The command line's ``caption`` and ``ask`` tasks are BLIP's
(:mod:`.blip`), the same calls.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..decoders import kv_decoder
from ..generate import generate
from ..sampling import GenerationConfig, fitted, prompt_fits
from ..image import PREPROCESSING, ImageLike
from ..pipeline import PIPELINES
from ..schema import boolean, integer, list_of, listed_file, nullable, obj, string
from ..video import FRAMES, images_of
from ..vision_lm import LLM_SECTION, Prompt, VisionLanguagePipeline

from .blip import ANSWER_TOKENS, CAPTION_TOKENS
from .blip2_retrieval import Blip2RetrievalPipeline

_ID = integer(0, 1 << 24)
RETRIEVAL_ONLY = ("this BLIP-2 bundle captions and answers: to match images and texts, export a "
                  "Blip2ForImageTextRetrieval, e.g. Salesforce/blip2-itm-vit-g (offline: random:blip2-itm-tiny)")


@PIPELINES.register("blip2")
class Blip2Pipeline(VisionLanguagePipeline):
    family = "blip2"
    needs = {"vision": (("pixel_values",), ("image_features",)), "embed": (("input_ids",), ("inputs_embeds",))}
    # the language model's parts: decoder-only (OPT) or encoder-decoder (T5); check_consistency
    SEQ2SEQ_PARTS = {"encoder": (("inputs_embeds", "attention_mask"), ("encoder_states",)),
                     "cross_kv": (("encoder_states",), ()),
                     "text_decoder": (("input_ids", "attention_mask", "encoder_attention_mask"), ("logits",))}
    manifest_schema = {
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file(), "bos_token_id": nullable(_ID), "add_bos": boolean()},
                         {"eos_token_id": nullable(_ID), "add_eos": boolean()}),
        "prompt": obj({"image_token_id": _ID, "image_seq_length": integer(1, 4096),
                       "stop_token_ids": list_of(_ID, max_items=16), "question_template": string(max_length=1000)}),
        "llm": LLM_SECTION,
    }

    @classmethod
    def variant(cls, manifest) -> type:
        """A retrieval bundle (``task: retrieval``, from Blip2ForImageTextRetrieval) has its own pipeline."""
        task = manifest.get("task") if isinstance(manifest, dict) else None
        return Blip2RetrievalPipeline if task == "retrieval" else cls

    def match(self, *args, **kwargs):
        raise UsageError(RETRIEVAL_ONLY)

    match.refusal = True  # not a capability of this bundle (the server lists what a bundle answers)
    retrieve = embedders = match

    @classmethod
    def check_consistency(cls, manifest):
        template = manifest["prompt"]["question_template"]
        problems = [] if template.count("{}") == 1 else [
            f"manifest.prompt.question_template must hold one '{{}}' for the question, found {template!r}"]
        settings = manifest["tokenizer"]
        for key, flag in (("bos_token_id", "add_bos"), ("eos_token_id", "add_eos")):
            if settings.get(flag) and not isinstance(settings.get(key), int):
                problems.append(f"manifest.tokenizer.{flag} is true but {key} is {settings.get(key)!r}: a token id "
                                "is needed to add")
        parts = manifest["parts"]
        if "llm" in parts:
            return problems + cls.check_text(manifest, manifest["prompt"]["image_seq_length"])
        for name, (inputs, outputs) in cls.SEQ2SEQ_PARTS.items():
            if name not in parts:
                problems.append(f"part {name!r} is missing: a BLIP-2 bundle has 'llm' (OPT) or "
                                f"{sorted(cls.SEQ2SEQ_PARTS)} (T5)")
                continue
            have = {t["name"] for t in parts[name]["inputs"]} | {t["name"] for t in parts[name]["outputs"]}
            problems += [f"part {name!r} lacks {n!r} (the T5 decoding feeds or reads it)" for n in inputs + outputs
                         if n not in have]
        start = manifest["llm"].get("decoder_start_token_id")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            problems.append(f"manifest.llm.decoder_start_token_id is {start!r}, expected a token id (a T5 bundle's "
                            "decoder starts with it)")
        return problems

    def setup(self):
        prompt, llm = self.manifest["prompt"], self.manifest["llm"]
        decoder = None
        self.seq2seq = "llm" not in self.parts
        if self.seq2seq:  # T5: relative positions (no position ids); ids in, embedded by the decoder itself
            decoder = kv_decoder(self.parts["text_decoder"], llm["num_layers"], llm["kv_heads"], llm["head_dim"],
                                 token_input="input_ids", positions=False)
        self.setup_text(prompt["image_token_id"], prompt["image_seq_length"], prompt["stop_token_ids"], CAPTION_TOKENS,
                        decoder)

    def prompt(self, image, text: str | None = None, frames: int = FRAMES) -> Prompt:
        """The image's query features, then ``text`` (none for a caption) with BOS (OPT) or EOS (T5)
        where the bundle's tokenizer adds them. ``image`` may be several images or a video's path
        (``frames`` of its frames): their query features one after another, as BLIP-2's zero-shot
        video question answering concatenates them."""
        settings = self.manifest["tokenizer"]
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise InputError(f"a prompt must be a non-empty string or None, found {text!r}")
        images = images_of(image, frames)
        if not images:
            raise InputError("BLIP-2 captions and answers about an image: give one (a path, PIL image or array)")
        ids = [self.image_token_id] * len(images) + ([settings["bos_token_id"]] if settings["add_bos"] else [])
        if text is not None:
            ids += self.tokenizer.encode(text, add_special_tokens=False).ids
        if settings.get("add_eos"):
            ids.append(settings["eos_token_id"])
        return self.merge(ids, self.image_features(images))

    def continuations(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[list[int]]:
        """The token ids each prompt continues with; a T5 bundle encodes each prompt, then decodes
        from the decoder's start token against it."""
        if not self.seq2seq:
            return super().continuations(prompts, config)
        start = [self.manifest["llm"]["decoder_start_token_id"]]
        config = fitted(config, len(start), self.context_length)
        found = []
        for p in prompts:
            found += generate(self.encoded(p), lambda tokens: tokens, [np.asarray(start, np.int64)], [start], config,
                              self._stop_check(config)).tokens
        return found

    def encoded(self, prompt: Prompt):
        """A T5 bundle's text decoder bound to ``prompt`` encoded: its cross-attention keys and
        values and the encoder's mask, as per-generation constants."""
        prompt_fits(len(prompt.ids), self.context_length)
        mask = np.ones((1, len(prompt.ids)), np.int64)
        states = self.run("encoder", {"inputs_embeds": prompt.embeds[None], "attention_mask": mask})["encoder_states"]
        cross = self.run("cross_kv", {"encoder_states": states})
        names = [f"cross_{kv}.{i}" for i in range(self.manifest["llm"]["num_layers"]) for kv in ("key", "value")]
        return self.decoder.with_constants({"encoder_attention_mask": mask} | {n: cross[n] for n in names})

    def caption(self, image, prompt: str | None = None, frames: int = FRAMES, **generation) -> str:
        """The caption of ``image``: greedy by default, ``do_sample``/``num_beams`` as the engine
        takes them. With ``prompt``, the text the model adds after it (the prompt not repeated:
        T5 reads the prompt in its encoder and never writes it, OPT continues it)."""
        return self.caption_batch([image], prompt, frames=frames, **generation)[0]

    def caption_batch(self, images: Sequence[ImageLike], prompt: str | None = None, frames: int = FRAMES,
                      **generation) -> list[str]:
        config = self.generation.with_options(**generation)
        return [text.strip() for text in self.complete([self.prompt(image, prompt, frames) for image in images], config)]

    def caption_tokens(self, images: Sequence[ImageLike], prompt: str | None = None, frames: int = FRAMES,
                       **generation) -> list[list[int]]:
        """The generated token ids of each image's caption (the prompt's and the stop token excluded)."""
        config = self.generation.with_options(**generation)
        return self.continuations([self.prompt(image, prompt, frames) for image in images], config)

    def answer(self, image, question: str, frames: int = FRAMES, **generation) -> str:
        """The answer to ``question`` about ``image``, prompted as BLIP-2 was trained:
        "Question: {question} Answer:"."""
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"a question must be a non-empty string, found {question!r}")
        config = self.generation.with_options(max_new_tokens=ANSWER_TOKENS, fit_context=True).with_options(**generation)
        text = self.manifest["prompt"]["question_template"].format(question.strip())
        return self.complete([self.prompt(image, text, frames)], config)[0].strip()

"""What the families that put image features into a decoder-only language model share (LLaVA,
BLIP-2): three parts (``vision`` -> ``image_features``, ``embed``, ``llm``), a tokenizer, image
tokens in the prompt whose embeddings are replaced by the image's features, and the shared
generation engine (:mod:`.generate`) over the ``llm`` part.

A family sets its manifest sections (``tokenizer``, ``llm`` and its own prompt section), reads them
in ``setup`` and calls :meth:`VisionLanguagePipeline.setup_text`; it builds prompts with
:meth:`merge` and decodes with :meth:`complete` or :meth:`stream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import InputError
from .decoders import decoder_for
from .generate import Session, generate, generate_tokens
from .sampling import GenerationConfig, fitted
from .streaming import first_stop, stream_text
from .image import ImageLike, output_size, preprocess
from .pipeline import Pipeline, declared, mismatch
from .schema import integer, obj

LLM_SECTION = obj({"num_layers": integer(1, 1024), "kv_heads": integer(1, 1024), "head_dim": integer(1, 4096),
                   "hidden_size": integer(1, 1 << 20), "vocab_size": integer(1, 1 << 24),
                   "context_length": integer(1, 1 << 20)})


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt: ``ids`` with image tokens expanded, ``embeds`` (S, H) with the image
    features in place of the image tokens' embeddings."""

    ids: list[int]
    embeds: np.ndarray


class VisionLanguagePipeline(Pipeline):
    several_images = True  # a prompt may hold several images (a video's frames): runtime/video.py
    needs = {
        "vision": (("pixel_values",), ("image_features",)),
        "embed": (("input_ids",), ("inputs_embeds",)),
        "llm": (("inputs_embeds", "attention_mask"), ("logits",)),
    }

    @classmethod
    def check_text(cls, manifest, image_seq_length: int) -> list[str]:
        """The llm part against the manifest's ``llm`` section, the vision part's features against
        ``image_seq_length`` and the LLM's width, and preprocessing against the vision input."""
        llm = manifest["llm"]
        inputs = {t["name"] for t in manifest["parts"]["llm"]["inputs"]}
        decoder = decoder_for(None, inputs, llm["num_layers"], llm["kv_heads"], llm["head_dim"])
        features = declared(manifest, "vision", "image_features")["shape"]
        return (mismatch("the llm part's past inputs (layers) against llm.num_layers", sorted(decoder.past_names),
                         sorted(inputs - {"inputs_embeds", "attention_mask", "position_ids"}))
                + mismatch("the vision part's image_features (tokens, hidden) against the image sequence length and "
                           "llm.hidden_size", [image_seq_length, llm["hidden_size"]], features[1:])
                + mismatch("preprocessing makes images of (height, width), the vision part takes pixel_values of",
                           declared(manifest, "vision", "pixel_values")["shape"][2:],
                           output_size(manifest["preprocessing"]) or ("any",)))

    def setup_text(self, image_token_id: int, image_seq_length: int, stop_token_ids: Sequence[int],
                   max_new_tokens: int, decoder=None) -> None:
        """Open the tokenizer (``manifest.tokenizer.file``) and ``decoder`` (default: the one that
        fits the ``llm`` part)."""
        from tokenizers import Tokenizer

        settings, llm = self.manifest["tokenizer"], self.manifest["llm"]
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(settings["file"])))
        except Exception as exc:
            raise ValueError(f"its tokenizer file {settings['file']!r} cannot be read ({exc})") from None
        self.image_token_id, self.image_seq_length = image_token_id, image_seq_length
        self.context_length = llm["context_length"]
        if decoder is None:
            inputs = [t["name"] for t in self.manifest["parts"]["llm"]["inputs"]]
            decoder = decoder_for(self.parts["llm"], inputs, llm["num_layers"], llm["kv_heads"], llm["head_dim"])
        self.decoder = decoder
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=tuple(stop_token_ids),
                                           fit_context=True)

    # -- the pieces -----------------------------------------------------------------------------
    def image_inputs(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images -> the vision part's pixel_values (N, 3, S, S) float32."""
        return preprocess(list(images), self.manifest["preprocessing"])

    def image_features(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(images, image_seq_length, hidden) float32 features, the vision part's output."""
        return self.run("vision", {"pixel_values": self.image_inputs(images)})["image_features"]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token ids (B, S) int64 -> (B, S, hidden) float32."""
        return self.run("embed", {"input_ids": np.asarray(ids, np.int64)})["inputs_embeds"]

    def merge(self, ids: list[int], features: np.ndarray | None) -> Prompt:
        """``ids`` with each image token expanded to ``image_seq_length`` copies, embedded, and the
        image ``features`` (N, T, H) in place of those copies' embeddings."""
        slots = sum(t == self.image_token_id for t in ids)
        images = 0 if features is None else len(features)
        if slots != images:
            raise InputError(f"the prompt has {slots} image token(s) and {images} image(s): give one image "
                             "per image token (more images than image tokens cannot be placed)")
        expanded: list[int] = []
        for t in ids:
            expanded += [t] * (self.image_seq_length if t == self.image_token_id else 1)
        embeds = self.embed(np.asarray([expanded]))[0]
        if images:
            embeds[np.asarray(expanded) == self.image_token_id] = features.reshape(-1, features.shape[-1])
        return Prompt(expanded, embeds)

    def decode_text(self, tokens: list[int], config: GenerationConfig) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = first_stop(text, config.stop_strings)
        return text if cut is None else text[:cut]

    def _stop_check(self, config: GenerationConfig):
        if not config.stop_strings:
            return None
        return lambda row, tokens: first_stop(self.tokenizer.decode(tokens, skip_special_tokens=True),
                                              config.stop_strings) is not None

    def complete(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[str]:
        """The text each prompt continues with, decoded together (greedy, sampling or beams)."""
        return [self.decode_text(tokens, config) for tokens in self.continuations(prompts, config)]

    def continuations(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[list[int]]:
        """The token ids each prompt continues with (its stop token excluded)."""
        config = fitted(config, max(len(p.ids) for p in prompts), self.context_length)
        return generate(self.decoder, self.embed, [p.embeds for p in prompts], [p.ids for p in prompts], config,
                        self._stop_check(config)).tokens

    def stream(self, prompt: Prompt, config: GenerationConfig, session: Session | None = None) -> Iterator[str]:
        """The text ``prompt`` continues with, in pieces as tokens come (beam search: one piece at the
        end); ``session`` keeps the KV cache for a next turn."""
        config = fitted(config, len(prompt.ids), self.context_length)
        if config.num_beams > 1:  # beam search picks the answer at the end: one piece
            if session is not None:
                session.ids, session.cache = [], None  # its cache held other beams: start afresh next turn
            tokens = generate(self.decoder, self.embed, [prompt.embeds], [prompt.ids], config).tokens[0]
            return iter([self.decode_text(tokens, config)])
        steps = generate_tokens(self.decoder, self.embed, [prompt.embeds], [prompt.ids], config,
                                self._stop_check(config), session)
        tokens = _counted((picked[0] for picked in steps if picked[0] is not None), config.max_new_tokens, session)
        return stream_text(tokens, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                           config.stop_strings)


def _counted(tokens: Iterator[int], limit: int, session: Session | None) -> Iterator[int]:
    """``tokens`` as they come; at their end ``session.finish_reason`` says why they ended, as
    OpenAI's API does: "length" at ``limit`` (the answer may be cut), else "stop"."""
    count = 0
    for token in tokens:
        count += 1
        yield token
    if session is not None:
        session.finish_reason, session.generated = ("length" if count >= limit else "stop"), count

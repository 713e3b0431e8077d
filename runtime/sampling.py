"""Generation settings and logits processing, family-free.

:class:`GenerationConfig` holds a generation's settings (transformers' names and defaults) and
checks them; :func:`processors` turns it into a list of small steps on the logits (repetition
penalty, no-repeat n-grams, temperature, top-k, top-p, min-p, minimum length), in the order
transformers applies them, shared by greedy decoding, seeded sampling and beam search.
:func:`fitted` and :func:`prompt_fits` hold a generation to the model's context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from .errors import InputError, UsageError


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick each next token. ``do_sample=False`` is greedy; with ``do_sample`` the
    processors below shape the distribution and ``seed`` makes the draw reproducible."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    no_repeat_ngram_size: int = 0  # 0: off
    min_new_tokens: int = 0  # the stop tokens are barred until this many tokens are made
    num_beams: int = 1  # > 1: beam search (with do_sample False), as transformers' generate
    length_penalty: float = 1.0  # beam search: a finished beam scores sum(log p) / length ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never", as transformers
    # True: max_new_tokens is a pipeline's default, which shrinks to what the model's context leaves
    # after the prompt (the answer then ends as OpenAI's finish_reason "length"); a max_new_tokens
    # the caller sets is held to, and one that cannot fit is an InputError (:func:`fitted`)
    fit_context: bool = False

    def checked(self) -> "GenerationConfig":
        """This config, or a ``UsageError`` naming every setting out of range."""
        problems = []

        def need(ok: bool, what: str) -> None:
            if not ok:
                problems.append(what)

        number = (int, float)
        need(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, f"max_new_tokens must be an integer >= 1, "
             f"found {self.max_new_tokens!r}")
        need(isinstance(self.temperature, number) and math.isfinite(self.temperature) and self.temperature > 0,
             f"temperature must be a finite number above 0, found {self.temperature!r}")
        need(_is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0, found {self.top_k!r}")
        need(isinstance(self.top_p, number) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], found {self.top_p!r}")
        need(isinstance(self.min_p, number) and 0 <= self.min_p < 1, f"min_p must be in [0, 1), found {self.min_p!r}")
        need(isinstance(self.repetition_penalty, number) and math.isfinite(self.repetition_penalty)
             and self.repetition_penalty > 0, f"repetition_penalty must be a finite number above 0, "
             f"found {self.repetition_penalty!r}")
        need(self.seed is None or _is_int(self.seed), f"seed must be an integer, found {self.seed!r}")
        need(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), f"stop_token_ids must be token ids, found "
             f"{list(self.stop_token_ids)!r}")
        need(all(isinstance(s, str) and s for s in self.stop_strings), f"stop_strings must be non-empty strings, "
             f"found {list(self.stop_strings)!r}")
        need(_is_int(self.min_new_tokens) and self.min_new_tokens >= 0, f"min_new_tokens must be an integer >= 0, "
             f"found {self.min_new_tokens!r}")
        need(_is_int(self.no_repeat_ngram_size) and self.no_repeat_ngram_size >= 0,
             f"no_repeat_ngram_size must be an integer >= 0, found {self.no_repeat_ngram_size!r}")
        need(_is_int(self.num_beams) and self.num_beams >= 1, f"num_beams must be an integer >= 1, found "
             f"{self.num_beams!r}")
        need(not (self.num_beams != 1 and self.do_sample), "beam search is deterministic here: set do_sample=False "
             "with num_beams > 1")
        need(isinstance(self.length_penalty, number) and math.isfinite(self.length_penalty),
             f"length_penalty must be a finite number, found {self.length_penalty!r}")
        need(self.early_stopping in (True, False, "never"), f"early_stopping must be True, False or 'never', found "
             f"{self.early_stopping!r}")
        if problems:
            raise UsageError("generation settings out of range: " + "; ".join(problems))
        return self

    def with_options(self, **options) -> "GenerationConfig":
        """A copy with ``options`` set; an unknown name is a ``UsageError`` listing the valid ones."""
        if "max_new_tokens" in options and "fit_context" not in options:  # the caller's own limit
            options = dict(options, fit_context=False)
        unknown = sorted(set(options) - set(self.__dataclass_fields__))
        if unknown:
            raise UsageError(f"unknown generation settings {unknown}: expected some of "
                             f"{', '.join(self.__dataclass_fields__)}")
        for key in ("stop_token_ids", "stop_strings"):
            if key in options and options[key] is not None and not isinstance(options[key], tuple):
                options[key] = tuple([options[key]] if isinstance(options[key], (str, int)) else options[key])
        return replace(self, **{k: v for k, v in options.items() if v is not None}).checked()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


Processor = Callable[[np.ndarray, list], np.ndarray]


def repetition_penalty(penalty: float) -> Processor:
    """transformers' rule: a seen token's score is divided by ``penalty`` if positive, else multiplied."""
    def apply(scores, seen):
        for row, ids in enumerate(seen):
            if ids:
                unique = np.unique(np.asarray(ids))
                picked = scores[row, unique]
                scores[row, unique] = np.where(picked > 0, picked / penalty, picked * penalty)
        return scores

    return apply


def temperature(value: float) -> Processor:
    return lambda scores, seen: scores / np.float32(value)


def top_k(k: int) -> Processor:
    def apply(scores, seen):
        if k >= scores.shape[-1]:
            return scores
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        return np.where(scores < kth, -np.inf, scores).astype(np.float32)

    return apply


def top_p(p: float) -> Processor:
    """Keep the smallest set of most probable tokens whose probability reaches ``p`` (at least one)."""
    def apply(scores, seen):
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as transformers
        probs = softmax(np.take_along_axis(scores, order, axis=-1))
        remove_sorted = np.cumsum(probs, axis=-1) <= (1 - p)
        remove_sorted[:, -1] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return np.where(remove, -np.inf, scores).astype(np.float32)

    return apply


def min_p(p: float) -> Processor:
    """Drop tokens less probable than ``p`` times the most probable one."""
    def apply(scores, seen):
        probs = softmax(scores)
        return np.where(probs < p * probs.max(axis=-1, keepdims=True), -np.inf, scores).astype(np.float32)

    return apply


def no_repeat_ngram(size: int) -> Processor:
    """transformers' rule: a token that would repeat an n-gram already in the row (prompt included)
    gets -inf."""
    def apply(scores, seen):
        for row, ids in enumerate(seen):
            if len(ids) + 1 < size:
                continue
            prefix = tuple(ids[len(ids) - size + 1:]) if size > 1 else ()
            banned = [ids[i + size - 1] for i in range(len(ids) - size + 1) if tuple(ids[i:i + size - 1]) == prefix]
            if banned:
                scores[row, banned] = -np.inf
        return scores

    return apply


def min_new_tokens(count: int, stop_ids: Sequence[int], prompt_lengths: Sequence[int]) -> Processor:
    """transformers' rule: the stop tokens score -inf while a row has made fewer than ``count``."""
    stops = list(stop_ids)

    def apply(scores, seen):
        for row, ids in enumerate(seen):
            if len(ids) - prompt_lengths[row] < count:
                scores[row, stops] = -np.inf
        return scores

    return apply


def processors(config: GenerationConfig, prompt_lengths: Sequence[int] = ()) -> list[Processor]:
    """The steps for ``config``, in transformers' order (penalties and the minimum length first,
    then the warpers); ``prompt_lengths``: each row's prompt, for the minimum length."""
    steps = []
    if config.repetition_penalty != 1.0:
        steps.append(repetition_penalty(config.repetition_penalty))
    if config.no_repeat_ngram_size:
        steps.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.min_new_tokens and config.stop_token_ids:
        steps.append(min_new_tokens(config.min_new_tokens, config.stop_token_ids, prompt_lengths))
    if config.do_sample:
        if config.temperature != 1.0:
            steps.append(temperature(config.temperature))
        if config.top_k:
            steps.append(top_k(config.top_k))
        if config.top_p < 1.0:
            steps.append(top_p(config.top_p))
        if config.min_p > 0.0:
            steps.append(min_p(config.min_p))
    return steps


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def fitted(config: GenerationConfig, length: int, context: int) -> GenerationConfig:
    """``config`` for a prompt of ``length`` tokens in a model of ``context`` positions: a default
    ``max_new_tokens`` (``fit_context``) cut to the room left; a caller's that does not fit, or a
    prompt that leaves no room, is an ``InputError`` that says how to fix it."""
    room = context - length
    if config.fit_context and room >= 1:
        return replace(config, max_new_tokens=min(config.max_new_tokens, room))
    if config.fit_context:
        raise InputError(f"the prompt has {length} tokens: with an answer of at least one, {length + 1 - context} "
                         f"over the model's context of {context}; shorten the prompt or the conversation (start a new "
                         "chat)")
    if config.max_new_tokens > room:
        raise InputError(f"the prompt has {length} tokens and asks for up to {config.max_new_tokens} new ones: "
                         f"{config.max_new_tokens - room} over the model's context of {context}; shorten the "
                         "conversation (start a new chat) or lower max_new_tokens (or leave it out: the answer then "
                         "ends where the context does)")
    return config


def prompt_fits(length: int, context: int) -> None:
    """A prompt (an encoder's input) of ``length`` tokens must fit the ``context``."""
    if length > context:
        raise InputError(f"the prompt has {length} tokens, {length - context} over the model's context of {context}: "
                         "shorten it")

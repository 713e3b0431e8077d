"""The generation engine: one decoding loop for every language-model part, family-free.

It drives a *decoder*: a bundle part that maps input embeddings (batch, sequence, hidden) float32,
an attention mask (batch, total) int64 and position ids (batch, sequence) int64, plus a KV cache,
to logits (batch, sequence, vocab) and the grown cache. Families only prepare the prompt's
embeddings (image features merged in, a Q-Former prefix, ...) and read the text out.

- :class:`KVDecoder` runs a plainly exported graph (``past_key.i`` / ``past_value.i`` in,
  ``present_key.i`` / ``present_value.i`` out, present = past + new) through ONNX Runtime's IO
  binding: the cache stays in ONNX Runtime's own buffers from step to step, never copied into
  numpy (the graph itself still concatenates past and new each step). On a backend without IO
  binding it runs with an explicit cache: numpy arrays fed and read each step.
- :class:`StatefulKVDecoder` runs the same graph on OpenVINO compiled stateful (each past/present
  pair a state inside the infer request): nothing is copied in or out, measured as fast as the
  explicit cache up to 256 cached tokens and 1.3x-1.6x faster from 1024 (benchmarks/kv_cache.py).
  :func:`kv_decoder` picks.
- :class:`SharedKVDecoder` runs a graph with one buffer per layer for past and present
  (``past_key_values.i.key`` in, ``present.i.key`` out, as onnxruntime-genai's model builder
  writes with GroupQueryAttention): one preallocated (batch, kv heads, capacity, head dim) buffer
  is bound as both, and each step writes only its new positions. Such graphs take no position
  ids and no padding (GroupQueryAttention assumes right padding), so a batch of prompts of
  different lengths runs row by row.
- :func:`decoder_for` picks the one that fits a part's input names.
- Logits processing is a list of small steps (repetition penalty, temperature, top-k, top-p,
  min-p), in the order transformers applies them; greedy and seeded sampling share them.
- A batch of prompts is left-padded; each row stops on its own stop token or stop string.
- :func:`stream_text` turns token ids into text pieces, holding back the bytes of a character
  split across tokens and anything that may be the start of a stop string.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

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


# -- logits processors: (scores (B, V) float32, seen ids per row) -> scores ----------------------
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


# -- the decoder ----------------------------------------------------------------------------------
class KVDecoder:
    """A plainly exported decoder part on ONNX Runtime, its cache kept in ORT's buffers.

    ``token_input`` names the input that takes what ``embed`` makes of the tokens (embeddings, or
    the ids themselves for a decoder that embeds them, as BLIP's). :meth:`with_constants` binds
    per-generation inputs (an encoder's cross-attention keys and values, computed once per image):
    they ride in the cache, so beam search reorders them with it."""

    def __init__(self, backend, num_layers: int, kv_heads: int, head_dim: int, token_input: str = "inputs_embeds",
                 positions: bool = True):
        self.backend, self.num_layers = backend, num_layers
        self.kv_heads, self.head_dim, self.token_input = kv_heads, head_dim, token_input
        self.positions = positions  # False: the graph takes no position_ids (T5's relative positions)
        self.past_names = [f"past_{kv}.{i}" for i in range(num_layers) for kv in ("key", "value")]
        self.present_names = [f"present_{kv}.{i}" for i in range(num_layers) for kv in ("key", "value")]
        self.constants: dict[str, np.ndarray] = {}

    pads_left = True  # takes left-padded batches (0 in the attention mask)
    grows_in_place = False  # True: a step changes the cache it is given (it cannot be stepped from twice)

    def with_constants(self, constants: dict[str, np.ndarray]) -> "KVDecoder":
        """This decoder with ``constants`` (name -> (batch, ...) array) fed at every step."""
        bound = copy.copy(self)
        bound.constants = dict(constants)
        return bound

    @property
    def _bound(self) -> bool:
        """Whether the cache lives in ONNX Runtime's buffers (IO binding); else in numpy arrays."""
        return getattr(self.backend, "session", None) is not None

    def _value(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        if not self._bound:
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array)

    def _array(self, value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def empty_cache(self, batch: int, capacity: int | None = None):
        """The cache before the first step; ``capacity`` (positions) is for decoders that preallocate."""
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return [self._value(empty) for _ in self.past_names] + [self._value(v) for v in self.constants.values()]

    def resume(self, cache, length: int, capacity: int):
        """The cache cut to its first ``length`` positions (a conversation's shared prefix)."""
        past = len(self.past_names)
        return [self._value(self._array(v)[:, :, :length]) for v in cache[:past]] + list(cache[past:])

    def reorder(self, cache, rows: np.ndarray):
        """The cache with its batch rows picked by ``rows`` (beam search): one copy per layer."""
        return [self._value(self._array(v)[rows]) for v in cache]

    def _tokens(self, embeds: np.ndarray) -> np.ndarray:
        """What the token input takes: int64 ids or float32 embeddings (no copy when already so)."""
        dtype = np.int64 if self.token_input == "input_ids" else np.float32
        return np.ascontiguousarray(embeds, dtype=dtype)

    def prefill_feeds(self, embeds: np.ndarray) -> dict[str, np.ndarray]:
        """Plain feeds for a prefill of ``embeds`` (B, S, H) with no padding and an empty cache
        (calibration runs the part with these)."""
        batch, length = embeds.shape[:2]
        tokens = self._tokens(embeds)
        feeds = {self.token_input: tokens, "attention_mask": np.ones((batch, length), np.int64)}
        if self.positions:
            feeds["position_ids"] = np.tile(np.arange(length, dtype=np.int64), (batch, 1))
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return feeds | {name: empty for name in self.past_names} | self.constants

    def _step_feeds(self, embeds, attention_mask, position_ids) -> dict[str, np.ndarray]:
        """A step's inputs other than the cache: tokens, attention mask and (if taken) positions."""
        feeds = {self.token_input: self._tokens(embeds),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        if self.positions:
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
        return feeds

    def step(self, embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache):
        """(logits of the last position (B, V) float32, all positions' logits (B, S, V), new cache)."""
        if not self._bound:
            return self._explicit_step(embeds, attention_mask, position_ids, cache)
        session = self.backend.session
        binding = session.io_binding()
        for name, value in self._step_feeds(embeds, attention_mask, position_ids).items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(self.past_names + list(self.constants), cache):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")  # first: outputs come back in binding order
        for name in self.present_names:
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = outputs[0].numpy()
        return logits[:, -1], logits, list(outputs[1:]) + list(cache[len(self.past_names):])

    def _explicit_step(self, embeds, attention_mask, position_ids, cache):
        """A step on a backend without IO binding: the cache goes in and comes out as arrays."""
        feeds = self._step_feeds(embeds, attention_mask, position_ids)
        feeds.update(zip(self.past_names + list(self.constants), cache))
        outputs = self.backend.run(feeds)
        logits = outputs["logits"]
        return (logits[:, -1], logits,
                [outputs[name] for name in self.present_names] + list(cache[len(self.past_names):]))


@dataclass
class StatefulCache:
    """A :class:`StatefulKVDecoder`'s cache: the generation's infer request, whose states hold the
    keys and values, and the per-generation constants fed beside them."""

    request: object
    constants: list


class StatefulKVDecoder(KVDecoder):
    """A plainly exported decoder part on OpenVINO, compiled stateful: the cache stays inside the
    request from step to step (nothing copied in or out), beam search reorders it in place and a
    conversation's next turn cuts it to the shared prefix. Chosen over the explicit cache by
    measurement (``python -m edgevfm.benchmarks.kv_cache``: with the cache fused into the attention,
    1.4x faster per token at 64 cached tokens, 3.1x at 1024, 4.7x at 2048)."""

    grows_in_place = True

    def _model(self):
        return self.backend.stateful(dict(zip(self.past_names, self.present_names)))

    def empty_cache(self, batch: int, capacity: int | None = None) -> StatefulCache:
        return StatefulCache(self._model().request(batch, self.kv_heads, self.head_dim),
                             [np.ascontiguousarray(v) for v in self.constants.values()])

    def resume(self, cache: StatefulCache, length: int, capacity: int) -> StatefulCache:
        cache.request.cut(length)
        return cache

    def reorder(self, cache: StatefulCache, rows: np.ndarray) -> StatefulCache:
        cache.request.take(rows)
        return StatefulCache(cache.request, [np.ascontiguousarray(v[rows]) for v in cache.constants])

    def step(self, embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: StatefulCache):
        feeds = self._step_feeds(embeds, attention_mask, position_ids)
        feeds.update(zip(self.constants, cache.constants))
        logits = cache.request.run(feeds, "logits")
        return logits[:, -1], logits, cache


def kv_decoder(backend, num_layers: int, kv_heads: int, head_dim: int, **options) -> KVDecoder:
    """The decoder for a plainly exported part: stateful where the backend can compile it so
    (OpenVINO), else with the cache fed and read each step (ONNX Runtime keeps it in its buffers)."""
    kind = StatefulKVDecoder if hasattr(backend, "stateful") else KVDecoder
    return kind(backend, num_layers, kv_heads, head_dim, **options)


@dataclass(frozen=True)
class SharedCache:
    """The KV buffers of a :class:`SharedKVDecoder` and how many positions hold values."""

    buffers: list
    length: int
    capacity: int


class SharedKVDecoder:
    """A decoder graph whose past and present share one buffer per layer (onnxruntime-genai's
    builder graphs): the buffers are allocated once per generation at ``capacity`` positions and
    bound as both input and output, so a step copies nothing but its new keys and values."""

    pads_left = False
    grows_in_place = False  # the new positions are written past the cache's length, which a step returns

    def __init__(self, backend, num_layers: int, kv_heads: int, head_dim: int):
        self.backend, self.num_layers = backend, num_layers
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
        self.present_names = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]

    def empty_cache(self, batch: int, capacity: int | None = None) -> SharedCache:
        import onnxruntime as ort

        if capacity is None or capacity < 1:
            raise UsageError(f"a shared-buffer decoder needs the cache capacity (prompt + new tokens), found "
                             f"{capacity!r}")
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        return SharedCache([ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32) for _ in self.past_names],
                           0, capacity)

    def resume(self, cache: SharedCache, length: int, capacity: int) -> SharedCache:
        """The cache holding its first ``length`` positions, with room for ``capacity`` (the old
        buffers when they are large enough: nothing is copied)."""
        if capacity <= cache.capacity:
            return replace(cache, length=length)
        grown = self.empty_cache(cache.buffers[0].shape()[0], capacity)
        for old, new in zip(cache.buffers, grown.buffers):
            data = new.numpy()  # a view of the new buffer
            data[:, :, :length] = old.numpy()[:, :, :length]
            new.update_inplace(data)
        return replace(grown, length=length)

    def reorder(self, cache: SharedCache, rows: np.ndarray) -> SharedCache:
        import onnxruntime as ort

        buffers = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[rows])) for v in cache.buffers]
        return replace(cache, buffers=buffers)

    def prefill_feeds(self, embeds: np.ndarray) -> dict[str, np.ndarray]:
        batch, length = embeds.shape[:2]
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return ({"inputs_embeds": embeds.astype(np.float32), "attention_mask": np.ones((batch, length), np.int64)}
                | {name: empty for name in self.past_names})

    def step(self, embeds: np.ndarray, attention_mask: np.ndarray, position_ids, cache: SharedCache):
        """As :meth:`KVDecoder.step`; ``position_ids`` are implied by the cache (GroupQueryAttention
        applies rotary embeddings itself) and the attention mask may hold no padding."""
        total = cache.length + embeds.shape[1]
        if total > cache.capacity:
            raise InputError(f"the KV cache holds {cache.capacity} positions and this step needs {total}: "
                             "allocate it for the prompt plus max_new_tokens")
        if attention_mask.shape != (embeds.shape[0], total) or not attention_mask.all():
            raise UsageError(f"a shared-buffer decoder takes no padding: expected an attention mask of ones shaped "
                             f"{(embeds.shape[0], total)}, found {attention_mask.shape} with "
                             f"{int((attention_mask == 0).sum())} zeros; run prompts of different lengths one by one")
        session = self.backend.session
        binding = session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        for name, value in zip(self.past_names, cache.buffers):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")
        for name, value in zip(self.present_names, cache.buffers):
            binding.bind_ortvalue_output(name, value)
        session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits[:, -1], logits, replace(cache, length=total)


def decoder_for(backend, inputs: Sequence[str], num_layers: int, kv_heads: int, head_dim: int):
    """The decoder that drives a part with these input names: a shared-buffer graph takes
    ``past_key_values.0.key``, a plain one ``past_key.0``."""
    if "past_key_values.0.key" in inputs:
        return SharedKVDecoder(backend, num_layers, kv_heads, head_dim)
    return kv_decoder(backend, num_layers, kv_heads, head_dim)


@dataclass
class Generation:
    """What :func:`generate` made: ``tokens`` per row (stop token excluded), and timings in
    seconds: ``prefill``, ``decode`` (all later steps), ``backend`` (inside the decoder),
    ``steps`` (decoder calls after the prefill)."""

    tokens: list[list[int]]
    stats: dict = field(default_factory=dict)

    @property
    def loop_overhead_per_token(self) -> float:
        """Seconds per decode step spent outside the decoder: the loop's own cost."""
        steps = max(1, self.stats.get("steps", 0))
        return max(0.0, self.stats["decode"] - self.stats["decode_backend"]) / steps


@dataclass
class Session:
    """A conversation's KV cache between turns: ``ids`` are the tokens whose keys and values it
    holds. A new turn whose prompt starts with the same tokens prefills only the rest;
    ``prefilled`` is how many tokens the last turn prefilled."""

    ids: list[int] = field(default_factory=list)
    cache: object = None
    prefilled: int = 0
    finish_reason: str | None = None  # of the last turn streamed: "stop", or "length" (cut at max_new_tokens)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def left_pad(prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt embeddings (S_i, H) -> (embeds (B, S, H), attention mask (B, S), position ids (B, S)),
    padded on the left as transformers' generate expects; prompts of token ids (S_i,) give (B, S)."""
    longest = max(len(p) for p in prompts)
    embeds = np.zeros((len(prompts), longest, *prompts[0].shape[1:]), prompts[0].dtype)
    mask = np.zeros((len(prompts), longest), np.int64)
    for row, prompt in enumerate(prompts):
        embeds[row, longest - len(prompt):] = prompt
        mask[row, longest - len(prompt):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return embeds, mask, positions


def generate_tokens(decoder: KVDecoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
                    prompt_ids: Sequence[Sequence[int]], config: GenerationConfig,
                    stop_check: Callable[[int, list[int]], bool] | None = None,
                    session: Session | None = None) -> Iterator[list[int | None]]:
    """Decode step by step; yields, per step, the new token of each row (None for a finished row).
    ``embed(ids (B, 1)) -> (B, 1, H)`` embeds the tokens picked; ``prompt_ids`` feed the repetition
    penalty; ``stop_check(row, tokens)`` may end a row early (stop strings); :func:`generate`
    runs it to the end and times it. With a ``session`` (one prompt), the cache of its previous
    turn is reused for the tokens this prompt shares with it, and the session keeps this turn's."""
    config = config.checked()
    if config.num_beams > 1:
        raise UsageError(f"beam search (num_beams={config.num_beams}) picks its answer at the end and cannot stream: "
                         "use generate(), or num_beams=1")
    rng = np.random.default_rng(config.seed)
    steps = processors(config, [len(ids) for ids in prompt_ids])
    if not decoder.pads_left and len({len(p) for p in prompts}) > 1:
        raise UsageError("this decoder takes no padding: generate() runs prompts of different lengths one by one")
    embeds, mask, positions = left_pad(prompts)
    batch = len(prompts)
    capacity = embeds.shape[1] + config.max_new_tokens
    reused = 0
    if session is not None and len(prompts) == 1 and session.cache is not None:
        reused = min(shared_prefix(session.ids, prompt_ids[0]), len(prompt_ids[0]) - 1)
    if reused:
        cache = decoder.resume(session.cache, reused, capacity)
        embeds, positions = embeds[:, reused:], positions[:, reused:]
    else:
        cache = decoder.empty_cache(batch, capacity)
    if session is not None:
        session.ids, session.cache, session.prefilled = [], None, embeds.shape[1]
    seen = [list(ids) for ids in prompt_ids]
    done = [False] * batch
    made: list[list[int]] = [[] for _ in range(batch)]
    stop_ids = set(config.stop_token_ids)
    fed = list(prompt_ids[0]) if session is not None else []
    for step in range(config.max_new_tokens):
        scores, _, cache = decoder.step(embeds, mask, positions, cache)
        if session is not None:  # the cache now holds every token fed so far
            session.ids, session.cache = list(fed), cache
        scores = scores.astype(np.float32, copy=True)
        for process in steps:
            scores = process(scores, seen)
        if config.do_sample:
            probs = softmax(scores.astype(np.float64))
            picked = [int(rng.choice(len(p), p=p / p.sum())) for p in probs]
        else:
            picked = [int(i) for i in np.argmax(scores, axis=-1)]
        out: list[int | None] = []
        for row, token in enumerate(picked):
            if done[row]:
                out.append(None)
                continue
            if token in stop_ids:
                done[row] = True
                out.append(None)
                continue
            made[row].append(token)
            seen[row].append(token)
            out.append(token)
            if stop_check is not None and stop_check(row, made[row]):
                done[row] = True
        yield out
        if all(done):
            return
        ids = np.asarray(picked, np.int64)[:, None]
        embeds = embed(ids)
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        fed += picked[:1]


def generate(decoder: KVDecoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
             prompt_ids: Sequence[Sequence[int]], config: GenerationConfig,
             stop_check: Callable[[int, list[int]], bool] | None = None) -> Generation:
    """Run :func:`generate_tokens` to the end, timing the prefill, the decode steps and the share
    of both spent inside the decoder. Prompts of different lengths on a decoder that takes no
    padding run one by one (their timings add up). ``num_beams > 1`` runs :func:`beam_search`."""
    if not decoder.pads_left and len({len(p) for p in prompts}) > 1:
        rows = [generate(decoder, embed, [p], [ids], config, None if stop_check is None else
                         (lambda row, tokens, i=i: stop_check(i, tokens)))
                for i, (p, ids) in enumerate(zip(prompts, prompt_ids))]
        stats = {key: sum(r.stats[key] for r in rows) for key in rows[0].stats}
        return Generation([r.tokens[0] for r in rows], stats)
    timed = _TimedDecoder(decoder)
    if config.checked().num_beams > 1:
        start = time.perf_counter()
        tokens = beam_search(timed, embed, prompts, prompt_ids, config)
        total = time.perf_counter() - start
        return Generation(tokens, {"prefill": timed.first, "decode": total - timed.first,
                                   "steps": max(0, timed.calls - 1), "decode_backend": timed.seconds - timed.first,
                                   "backend": timed.seconds})
    tokens: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    prefill = None
    for step, picked in enumerate(generate_tokens(timed, embed, prompts, prompt_ids, config, stop_check)):
        if step == 0:
            prefill = time.perf_counter() - start
            prefill_backend = timed.seconds
        for row, token in enumerate(picked):
            if token is not None:
                tokens[row].append(token)
    total = time.perf_counter() - start
    prefill = total if prefill is None else prefill
    return Generation(tokens, {"prefill": prefill, "decode": total - prefill, "steps": max(0, timed.calls - 1),
                               "decode_backend": timed.seconds - prefill_backend, "backend": timed.seconds})


class _TimedDecoder:
    def __init__(self, decoder):
        self.decoder, self.seconds, self.calls, self.first = decoder, 0.0, 0, 0.0
        self.pads_left = decoder.pads_left

    def empty_cache(self, batch, capacity=None):
        return self.decoder.empty_cache(batch, capacity)

    def reorder(self, cache, rows):
        return self.decoder.reorder(cache, rows)

    def step(self, *args):
        start = time.perf_counter()
        try:
            return self.decoder.step(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            if self.calls == 1:
                self.first = self.seconds


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(decoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
                prompt_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
    """The best of ``num_beams`` hypotheses per prompt, as transformers' beam search picks it: each
    step keeps the 2 x beams best continuations of all beams (sum of log-probabilities after the
    processors), moves those ending in a stop token (or at ``max_new_tokens``) among the finished
    ones scored by length ** ``length_penalty``, continues the best ``num_beams`` others, and stops
    when no running beam can beat the finished ones (``early_stopping``). The prompt is prefilled
    once per row and its cache copied to each beam. Returns tokens per row, stop token excluded."""
    config = config.checked()
    beams = config.num_beams
    steps = processors(config, [len(prompt_ids[b]) for b in range(len(prompts)) for _ in range(beams)])
    stop_ids = set(config.stop_token_ids)
    keep = max(2, 1 + len(stop_ids)) * beams
    embeds, mask, positions = left_pad(prompts)
    batch, longest = len(prompts), embeds.shape[1]
    cache = decoder.empty_cache(batch, longest + config.max_new_tokens)
    scores, _, cache = decoder.step(embeds, mask, positions, cache)
    rows = np.repeat(np.arange(batch), beams)  # row b's beams are b * beams ... b * beams + beams - 1
    cache, mask, positions = decoder.reorder(cache, rows), mask[rows], positions[rows]
    scores = scores[rows]
    running = [[list(prompt_ids[b]) for _ in range(beams)] for b in range(batch)]  # prompt + generated
    running_scores = np.zeros((batch, beams), np.float32)  # float32 throughout, as transformers
    running_scores[:, 1:] = -1e9  # the first step continues beam 0 only: the beams start identical
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]  # (score, sequence), best first
    improvable = np.ones(batch, bool)
    for step in range(config.max_new_tokens):
        logp = log_softmax(scores.astype(np.float32))
        for process in steps:
            logp = process(logp, [seq for row in running for seq in row])
        total = (logp.reshape(batch, beams, -1) + running_scores[:, :, None]).reshape(batch, -1)
        vocab = logp.shape[-1]
        top = np.argsort(-total, axis=-1, kind="stable")[:, :keep]
        top_scores = np.take_along_axis(total, top, axis=-1)
        origin, token = top // vocab, top % vocab
        last = step + 1 == config.max_new_tokens
        hits = np.isin(token, list(stop_ids)) | last
        generated = step + 1
        next_rows, next_scores, next_seqs = [], np.zeros((batch, beams), np.float32), []
        for b in range(batch):
            # finished: the top `beams` candidates that hit a stop, if improvement is still possible
            full = len(finished[b]) == beams and config.early_stopping is True
            for j in range(beams):
                if hits[b, j] and improvable[b] and not full:
                    score = top_scores[b, j] / (generated ** config.length_penalty)
                    seq = running[b][origin[b, j]] + [int(token[b, j])]
                    finished[b].append((float(score), seq))
            finished[b] = sorted(finished[b], key=lambda f: -f[0])[:beams]
            alive = [j for j in range(keep) if not hits[b, j]][:beams]
            while len(alive) < beams:  # every continuation hit a stop: the loop ends below
                alive.append(alive[-1] if alive else 0)
            next_rows += [b * beams + origin[b, j] for j in alive]
            next_scores[b] = [top_scores[b, j] if not hits[b, j] else -1e9 for j in alive]
            next_seqs.append([running[b][origin[b, j]] + [int(token[b, j])] for j in alive])
        running, running_scores = next_seqs, next_scores
        if last or hits.all():
            break
        # can a running beam still beat the worst finished one?
        length = generated if not (config.early_stopping == "never" and config.length_penalty > 0) \
            else config.max_new_tokens
        best_possible = running_scores[:, 0] / (length ** config.length_penalty)
        for b in range(batch):
            if len(finished[b]) == beams:
                improvable[b] &= bool(best_possible[b] > finished[b][-1][0])
        if not improvable.any() or (config.early_stopping is True and all(len(f) == beams for f in finished)):
            break
        picked = np.asarray(next_rows)
        if not np.array_equal(picked, np.arange(len(picked))):
            cache, mask, positions = decoder.reorder(cache, picked), mask[picked], positions[picked]
        ids = np.asarray([seq[-1] for row in running for seq in row], np.int64)[:, None]
        mask = np.concatenate([mask, np.ones((len(picked), 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        scores, _, cache = decoder.step(embed(ids), mask, positions, cache)
    out = []
    for b in range(batch):
        best = finished[b][0][1] if finished[b] else running[b][0]
        tokens = best[len(prompt_ids[b]):]
        out.append(tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens)
    return out


# -- text -----------------------------------------------------------------------------------------
def stream_text(tokens: Iterator[int], decode: Callable[[list[int]], str],
                stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces for a stream of token ids. A piece is given out only once it is final: not the
    half of a character whose bytes span tokens (decoded as U+FFFD until complete), not a tail that
    may grow into a stop string; the text ends before the first stop string."""
    ids: list[int] = []
    sent = 0
    hold = max((len(s) for s in stop_strings), default=1) - 1
    text = ""
    for token in tokens:
        ids.append(token)
        text = decode(ids)
        cut = first_stop(text, stop_strings)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        ready = len(text) - hold
        while ready > sent and text[ready - 1] == "\ufffd":  # an unfinished character
            ready -= 1
        if ready > sent:
            yield text[sent:ready]
            sent = ready
    if len(text) > sent:
        yield text[sent:]


def first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(found) if found else None


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

"""Decoders: what drives a language-model part one step at a time, its KV cache kept where the
backend keeps it best. A decoder maps input embeddings (batch, sequence, hidden) float32, an
attention mask (batch, total) int64 and position ids (batch, sequence) int64, plus a KV cache, to
logits (batch, sequence, vocab) and the grown cache.

- :class:`KVDecoder` runs a plainly exported graph (``past_key.i`` / ``past_value.i`` in,
  ``present_key.i`` / ``present_value.i`` out, present = past + new) through ONNX Runtime's IO
  binding: the cache stays in ONNX Runtime's own buffers from step to step, never copied into
  numpy (the graph itself still concatenates past and new each step). On a backend without IO
  binding it runs with an explicit cache: numpy arrays fed and read each step.
- :class:`StatefulKVDecoder` runs the same graph on OpenVINO compiled stateful (each past/present
  pair a state inside the infer request): nothing is copied in or out; how much faster than the
  explicit cache, by cache length, is measured by ``python -m edgevfm.benchmarks.kv_cache BUNDLE``
  (benchmarks/reports/kv-cache-llava-smol.md).
  :func:`kv_decoder` picks.
- :class:`SharedKVDecoder` runs a graph with one buffer per layer for past and present
  (``past_key_values.i.key`` in, ``present.i.key`` out, as onnxruntime-genai's model builder
  writes with GroupQueryAttention): one preallocated (batch, kv heads, capacity, head dim) buffer
  is bound as both, and each step writes only its new positions. Such graphs take no position
  ids and no padding (GroupQueryAttention assumes right padding), so a batch of prompts of
  different lengths runs row by row.
- :func:`decoder_for` picks the one that fits a part's input names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .errors import InputError, UsageError


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
    measurement: ``python -m edgevfm.benchmarks.kv_cache BUNDLE`` times both by cache length
    (benchmarks/reports/kv-cache-llava-smol.md)."""

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

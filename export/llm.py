"""A language model's ``embed`` and ``llm`` parts, shared by the families that put image features
before a decoder-only text model (LLaVA, BLIP-2 with OPT).

- ``embed``: token ids -> input embeddings (one Gather: an ONNX part, so recipes can quantize it).
- ``llm``: input embeddings + attention mask + past keys/values of every layer -> logits + present
  keys/values, dynamic batch, sequence and past length. Two graphs (``export(..., llm_graph=)``):
  ``builder`` is onnxruntime-genai's model builder graph (``past_key_values.i.key`` ->
  ``present.i.key``, one shared buffer, no position ids, no padding; see :mod:`.genai_builder`);
  ``plain`` is torch's export (``past_key.i`` -> ``present_key.i``, present = past + new, position
  ids, left padding), for any text model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .spec import PartSpec, TensorSpec


class TokenEmbeddings(nn.Module):
    """input_ids (batch, sequence) int64 -> inputs_embeds (batch, sequence, hidden) float32."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class LanguageModelStep(nn.Module):
    """One decoder call with a KV cache: inputs_embeds (batch, sequence, hidden), attention_mask
    (batch, past + sequence) int64 with 0 at left padding, position_ids (batch, sequence) int64,
    then past_key.i, past_value.i (batch, kv heads, past, head dim) for every layer ->
    logits (batch, sequence, vocab), present_key.i, present_value.i (batch, kv heads, past +
    sequence, head dim). ``base`` is the text model without its head (``*Model``), ``head`` the LM head."""

    def __init__(self, base, head, layers: int):
        super().__init__()
        self.lm, self.head, self.layers = base, head, layers

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True)
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (self.head(out.last_hidden_state), *presents)


class BuilderLanguageModelStep(LanguageModelStep):
    """The reference for the builder graph's signature: inputs_embeds, attention_mask (no padding),
    then past keys/values; positions follow from the mask."""

    def forward(self, inputs_embeds, attention_mask, *past):
        positions = (attention_mask.cumsum(1) - 1)[:, -inputs_embeds.shape[1]:]
        return super().forward(inputs_embeds, attention_mask, positions, *past)


STEP_VARIANTS = {0: (3, 4), 1: (0, 6), 2: (7, 1)}  # variant: (past, sequence)


def step_shape(batch: int, variant: int):
    """The shapes every KV-cache step part is traced (variant 0: past 3, sequence 4) and checked at
    (variant 1: past 0, a prompt of 6, row 0 left-padded by 2; variant 2: past 7, one new token):
    (past, sequence, attention mask (batch, past + sequence), the variant's seeded generator)."""
    past, length = STEP_VARIANTS[variant]
    mask = torch.ones(batch, past + length, dtype=torch.int64)
    if variant == 1:
        mask[0, :2] = 0
    return past, length, mask, torch.Generator().manual_seed(variant)


def past_feeds(batch: int, past: int, layers: int, heads: int, head_dim: int, g) -> dict:
    """Random past_key.i / past_value.i of every layer (batch, heads, past, head dim)."""
    return {f"past_{kv}.{i}": torch.randn(batch, heads, past, head_dim, generator=g)
            for i in range(layers) for kv in ("key", "value")}


def given_caches(caches, layers: int):
    """An encoder-decoder cache from a step's inputs: ``caches`` holds each layer's self-attention
    past key and value, then each layer's cross-attention key and value, computed once per
    generation (``cross_kv``) and marked as such, so the step never recomputes them."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    n = layers
    own = DynamicCache(ddp_cache_data=[(caches[2 * i], caches[2 * i + 1]) for i in range(n)])
    cross = DynamicCache(ddp_cache_data=[(caches[2 * n + 2 * i], caches[2 * n + 2 * i + 1]) for i in range(n)])
    cache = EncoderDecoderCache(own, cross)
    for i in range(n):
        cache.is_updated[i] = True
    return cache


def self_attention_presents(cache) -> list:
    """present_key.i, present_value.i of every layer of an encoder-decoder cache, in order."""
    presents = []
    for layer in cache.self_attention_cache.layers:
        presents += [layer.keys, layer.values]
    return presents


def text_parts(checkpoint, text, language_model: Callable, builder: bool, causal_lm: Callable | None = None,
               tokenizer=None) -> list[PartSpec]:
    """The ``embed`` and ``llm`` parts of the text model whose config is ``text``.

    ``language_model(model)`` gives (the text model without its head, the LM head);
    ``causal_lm(model)`` the text model as a transformers ``*ForCausalLM`` (what the builder reads,
    with ``tokenizer``), needed only when ``builder``."""
    hidden, vocab, layers = text.hidden_size, text.vocab_size, text.num_hidden_layers
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    embedding = checkpoint.model.get_input_embeddings()
    width = embedding.embedding_dim

    def ids(batch, variant):
        length = 5 if variant == 0 else 9
        return {"input_ids": torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(variant))}

    def step(batch, variant):
        past, length, mask, g = step_shape(batch, variant)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
        with torch.no_grad():  # real rows of the embedding table: the scale a trained model sees
            embeds = embedding(torch.randint(0, vocab, (batch, length), generator=g))
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        return feeds | past_feeds(batch, past, layers, kv_heads, head_dim, g)

    if builder:
        from .genai_builder import build_decoder, check_builder

        check_builder(text.model_type, head_dim)
    past_name = "past_key_values.{i}.{kv}" if builder else "past_{kv}.{i}"
    present_name = "present.{i}.{kv}" if builder else "present_{kv}.{i}"
    kv = [TensorSpec(past_name.format(i=i, kv=kv), "float32", ("batch", kv_heads, "past", head_dim))
          for i in range(layers) for kv in ("key", "value")]
    present = [TensorSpec(present_name.format(i=i, kv=kv), "float32", ("batch", kv_heads, "total", head_dim))
               for i in range(layers) for kv in ("key", "value")]
    embeds = TensorSpec("inputs_embeds", "float32", ("batch", "sequence", width))
    logits = TensorSpec("logits", "float32", ("batch", "sequence", vocab))

    def builder_step(batch, variant):
        """The plain step's inputs without position ids and padding (the builder graph takes none)."""
        feeds = step(batch, variant)
        feeds["attention_mask"] = torch.ones_like(feeds["attention_mask"])
        del feeds["position_ids"]
        return {(past_name.format(i=k.split(".")[1], kv=k.split(".")[0][5:]) if k.startswith("past_") else k): v
                for k, v in feeds.items()}

    if builder:
        llm = PartSpec("llm", lambda model: BuilderLanguageModelStep(*language_model(model), layers),
                       [embeds, TensorSpec("attention_mask", "int64", ("batch", "total"))] + kv,
                       [logits] + present, builder_step, atol=1e-3, rtol=1e-3, check_variants=(1, 2),
                       build=lambda model, path: build_decoder(causal_lm(model), tokenizer, path))
    else:
        llm = PartSpec("llm", lambda model: LanguageModelStep(*language_model(model), layers),
                       [embeds, TensorSpec("attention_mask", "int64", ("batch", "total")),
                        TensorSpec("position_ids", "int64", ("batch", "sequence"))] + kv,
                       [logits] + present, step,
                       # float32 accumulation through many layers: the trained 30-layer SmolLM2's
                       # logits (magnitude ~20) differ from PyTorch by ~5e-4; tiny models by ~1e-7
                       atol=1e-3, rtol=1e-3, check_variants=(1, 2))
    return [PartSpec("embed", TokenEmbeddings, [TensorSpec("input_ids", "int64", ("batch", "sequence"))], [embeds],
                     ids), llm]


def llm_section(text) -> dict:
    """The manifest's ``llm`` section: what the runtime's decoder needs to know."""
    return {"num_layers": text.num_hidden_layers,
            "kv_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            "hidden_size": text.hidden_size, "vocab_size": text.vocab_size,
            "context_length": text.max_position_embeddings}

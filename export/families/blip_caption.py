"""BLIP captioning's parts (from ``BlipForConditionalGeneration``), after ``vision``:

- ``cross_kv``: image_embeds -> every decoder layer's cross-attention keys and values, computed once
  per image (not per token): ``cross_key.i`` / ``cross_value.i`` (batch, heads, patches + 1, head dim).
- ``text_decoder``: input_ids, attention_mask, position_ids, the self-attention cache (``past_key.i``
  -> ``present_key.i``, present = past + new) and the cross keys/values -> logits. The runtime's
  generation engine drives it like any plain decoder (ids in, not embeddings; the cross keys and
  values ride in its cache as constants, so beam search reorders them too).

VQA (:mod:`.blip_vqa`) has the same decoder, attending to the question's states instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ..llm import given_caches, past_feeds, self_attention_presents, step_shape
from ..spec import PartSpec, TensorSpec
from .blip import TASK_EXPORTS, Shapes, TaskExport


class CrossKeysValues(nn.Module):
    """image_embeds -> cross_key.i, cross_value.i of every decoder layer (batch, heads, tokens, head dim)."""

    def __init__(self, model):
        super().__init__()
        self.layers = model.text_decoder.bert.encoder.layer

    def forward(self, image_embeds):
        out = []
        for layer in self.layers:
            attention = layer.crossattention.self
            shape = (*image_embeds.shape[:-1], -1, attention.attention_head_size)
            out += [attention.key(image_embeds).view(shape).transpose(1, 2),
                    attention.value(image_embeds).view(shape).transpose(1, 2)]
        return tuple(out)


class TextDecoderStep(nn.Module):
    """One decoder call: input_ids (batch, sequence), attention_mask (batch, past + sequence),
    position_ids (batch, sequence), past_key.i / past_value.i, then cross_key.i / cross_value.i ->
    logits (batch, sequence, vocab), present_key.i / present_value.i."""

    def __init__(self, model):
        super().__init__()
        self.decoder, self.layers = model.text_decoder, model.config.text_config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *caches):
        key = caches[2 * self.layers]
        # the cross-attention branch is taken when encoder states are given; their values are unused
        states = key.new_zeros(key.shape[0], key.shape[2], 1)
        mask = torch.ones(key.shape[0], key.shape[2], dtype=torch.int64)
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           encoder_hidden_states=states, encoder_attention_mask=mask,
                           cache=given_caches(caches, self.layers), use_cache=True)
        return (out.logits, *self_attention_presents(out.cache))


def decoder_text(text) -> dict:
    """The manifest's text section of a generating task: what the runtime's decoder needs."""
    return {"num_layers": text.num_hidden_layers, "heads": text.num_attention_heads,
            "head_dim": text.hidden_size // text.num_attention_heads, "vocab_size": text.vocab_size,
            "context_length": text.max_position_embeddings, "bos_token_id": int(text.bos_token_id),
            "sep_token_id": int(text.sep_token_id), "pad_token_id": int(text.pad_token_id)}


def decoder_parts(shapes: Shapes, states: TensorSpec, states_feeds, cross_length) -> list[PartSpec]:
    """``cross_kv`` (from ``states``, fed by ``states_feeds``) and ``text_decoder`` attending to its
    keys and values (``cross_length`` of them)."""
    layers, heads, head_dim, vocab = shapes.layers, shapes.heads, shapes.head_dim, shapes.vocab

    def kv(prefix, length):
        return [TensorSpec(f"{prefix}_{kv}.{i}", "float32", ("batch", heads, length, head_dim))
                for i in range(layers) for kv in ("key", "value")]

    def step(batch, variant):
        past, length, mask, g = step_shape(batch, variant)
        feeds = {"input_ids": torch.randint(0, vocab, (batch, length), generator=g), "attention_mask": mask,
                 "position_ids": (mask.cumsum(1) - 1).clamp(min=0)[:, past:]}
        feeds |= past_feeds(batch, past, layers, heads, head_dim, g)
        with torch.no_grad():
            cross = CrossKeysValues(shapes.model)(next(iter(states_feeds(batch, variant).values())))
        for i in range(layers):
            feeds[f"cross_key.{i}"], feeds[f"cross_value.{i}"] = cross[2 * i], cross[2 * i + 1]
        return feeds

    cross = kv("cross", cross_length)
    return [
        PartSpec("cross_kv", CrossKeysValues, [states], cross, states_feeds),
        PartSpec("text_decoder", TextDecoderStep,
                 [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                  TensorSpec("attention_mask", "int64", ("batch", "total")),
                  TensorSpec("position_ids", "int64", ("batch", "sequence"))] + kv("past", "past") + cross,
                 [TensorSpec("logits", "float32", ("batch", "sequence", vocab))] + kv("present", "total"), step,
                 check_variants=(1, 2)),
    ]


def caption_parts(shapes: Shapes) -> list[PartSpec]:
    return decoder_parts(shapes, shapes.image(), shapes.embeds, shapes.tokens)


TASK_EXPORTS["caption"] = TaskExport(caption_parts, decoder_text)

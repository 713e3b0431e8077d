"""BLIP-2 image-text retrieval, from ``Blip2ForImageTextRetrieval`` (Salesforce/blip2-itm-vit-g):
the Q-Former's first-stage heads, no language model.

- ``vision``: pixels -> ``image_embeds`` (the ViT's states, which ITM cross-attends to) and
  ``image_feats`` (batch, queries, projection): each learned query's output through the vision
  projection, unit length (ITC).
- ``text``: a text alone through the Q-Former -> ``text_feat``, its ``[CLS]`` state through the text
  projection, unit length. ITC is the largest cosine over the queries, as transformers computes it.
- ``itm``: the queries and the text together through the Q-Former, cross-attending to
  ``image_embeds`` -> ``itm_logits`` (no match, match), the head's output averaged over the queries.

The text is the tokenizer's ids alone (``[CLS] ... [SEP]``, BERT's): a checkpoint whose processor
prepends image tokens (``image_token_index`` set) drops them in transformers before the Q-Former,
so the graphs never see them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import PartSpec, Preset, TensorSpec


def image_and_queries(vision, qformer, queries, pixel_values):
    """The ViT's states of ``pixel_values`` and the Q-Former's learned ``queries`` after
    cross-attending to them (what generation projects into the language model and ITC projects)."""
    image = vision(pixel_values=pixel_values)[0]
    mask = torch.ones(image.shape[:2], dtype=torch.int64)
    queries = queries.expand(image.shape[0], -1, -1)
    return image, qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask)[0]


class RetrievalVision(nn.Module):
    """pixel_values -> image_embeds (batch, patches + 1, vision width), image_feats (batch, queries,
    projection), unit rows."""

    def __init__(self, model):
        super().__init__()
        self.vision, self.qformer = model.vision_model, model.qformer
        self.queries, self.projection = model.query_tokens, model.vision_projection

    def forward(self, pixel_values):
        image, states = image_and_queries(self.vision, self.qformer, self.queries, pixel_values)
        return image, nn.functional.normalize(self.projection(states), dim=-1)


class RetrievalText(nn.Module):
    """input_ids, attention_mask (batch, text) -> text_feat (batch, projection), unit length."""

    def __init__(self, model):
        super().__init__()
        self.embeddings, self.qformer, self.projection = model.embeddings, model.qformer, model.text_projection

    def forward(self, input_ids, attention_mask):
        states = self.qformer(query_embeds=self.embeddings(input_ids=input_ids), query_length=0,
                              attention_mask=attention_mask)[0]
        return nn.functional.normalize(self.projection(states[:, 0]), dim=-1)


class RetrievalMatch(nn.Module):
    """input_ids, attention_mask (batch, text), image_embeds -> itm_logits (batch, 2)."""

    def __init__(self, model):
        super().__init__()
        self.embeddings, self.qformer, self.head = model.embeddings, model.qformer, model.itm_head
        self.queries = model.query_tokens

    def forward(self, input_ids, attention_mask, image_embeds):
        queries = self.queries.expand(input_ids.shape[0], -1, -1)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=attention_mask.dtype), attention_mask], dim=1)
        # no encoder mask (every image token counts): transformers builds it for the queries and the text
        # together while only the queries cross-attend, which fails wherever it cannot skip an all-ones mask
        states = self.qformer(query_embeds=self.embeddings(input_ids=input_ids, query_embeds=queries),
                              query_length=queries.shape[1], attention_mask=mask, encoder_hidden_states=image_embeds)[0]
        return self.head(states[:, : queries.shape[1]]).mean(dim=1)


def retrieval_parts(model) -> list[PartSpec]:
    config = model.config
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    tokens, width = (size // patch) ** 2 + 1, config.vision_config.hidden_size
    queries, projection = config.num_query_tokens, config.image_text_hidden_size
    vocab = config.qformer_config.vocab_size
    text_in = [TensorSpec("input_ids", "int64", ("batch", "text")),
               TensorSpec("attention_mask", "int64", ("batch", "text"))]
    image = TensorSpec("image_embeds", "float32", ("batch", tokens, width))

    def pixels(batch, variant):
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(variant))}

    def texts(batch, variant):
        length = 7 + 3 * variant
        ids = torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(10 + variant))
        mask = torch.ones(batch, length, dtype=torch.int64)
        mask[0, length - 2:] = 0  # a padded row: the mask must be honoured
        return {"input_ids": ids, "attention_mask": mask}

    def matched(batch, variant):
        embeds = torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(20 + variant))
        return texts(batch, variant) | {"image_embeds": embeds}

    return [
        PartSpec("vision", RetrievalVision, [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                 [image, TensorSpec("image_feats", "float32", ("batch", queries, projection))], pixels),
        PartSpec("text", RetrievalText, text_in, [TensorSpec("text_feat", "float32", ("batch", projection))], texts),
        PartSpec("itm", RetrievalMatch, text_in + [image], [TensorSpec("itm_logits", "float32", ("batch", 2))],
                 matched),
    ]


def retrieval_sections(model) -> dict:
    return {"task": "retrieval", "tokenizer": {"file": "tokenizer.json"},
            "text": {"context_length": int(model.config.qformer_config.max_position_embeddings)}}


def retrieval_config(preset: Preset, tiny_vision: dict, tiny_qformer: dict):
    """(config, assets) of a random retrieval ``preset``: a BERT-style WordPiece tokenizer with
    ``[DEC]``, built offline, as BLIP's."""
    from transformers import Blip2Config

    from .blip import blip_tokenizer

    tokenizer = blip_tokenizer()
    vision = dict(preset.config.get("vision", tiny_vision), initializer_range=0.02)
    qformer = dict(preset.config.get("qformer", tiny_qformer), encoder_hidden_size=vision["hidden_size"],
                   vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, use_qformer_text_input=True)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=preset.config["queries"],
                         image_text_hidden_size=preset.config["projection"])
    config._attn_implementation = "eager"
    return config, {"tokenizer": tokenizer}


def build_retrieval(preset: Preset, config, assets: dict):
    """The random ``Blip2ForImageTextRetrieval`` of ``preset`` and its assets."""
    from transformers import Blip2ForImageTextRetrieval, BlipImageProcessorPil

    torch.manual_seed(preset.seed)
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():  # the learned queries initialise at zero: give them a trained model's scale
        model.query_tokens.normal_(0.0, 0.02)
    size = config.vision_config.image_size
    return model, dict(assets, image_processor=BlipImageProcessorPil(size={"height": size, "width": size}))


PRESETS = {
    "blip2-itm-tiny": Preset("blip2-itm-tiny", "tiny BLIP-2 image-text matcher (Q-Former ITM and ITC heads) for tests",
                             {"task": "retrieval", "queries": 8, "projection": 16}),
    "blip2-itm-vit-g": Preset("blip2-itm-vit-g", "BLIP-2's ViT-g/14 and Q-Former (32 queries) with its ITM and ITC "
                              "heads (Salesforce/blip2-itm-vit-g sizes)",
                              {"task": "retrieval", "queries": 32, "projection": 256,
                               "vision": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                              num_attention_heads=16, image_size=224, patch_size=14),
                               "qformer": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                               num_attention_heads=12, cross_attention_frequency=2)}),
}

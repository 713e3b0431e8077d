"""BLIP image-text retrieval's parts (from ``BlipForImageTextRetrieval``), after ``vision``:

- ``itm``: a text and the image's embeddings -> itm_logits (no match, match).
- ``image_proj`` / ``text_proj``: the contrastive (ITC) features, unit length.
"""

from __future__ import annotations

from torch import nn

from ..spec import PartSpec, TensorSpec
from .blip import TASK_EXPORTS, QuestionEncoder, Shapes, TaskExport


class MatchHead(nn.Module):
    """ITM: input_ids, attention_mask (batch, text) and image_embeds -> itm_logits (batch, 2)
    (no match, match): the text encoder attending to the image, its [CLS] state through the head."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.head = QuestionEncoder(model), model.itm_head

    def forward(self, input_ids, attention_mask, image_embeds):
        return self.head(self.encoder(input_ids, attention_mask, image_embeds)[:, 0])


class ImageFeature(nn.Module):
    """ITC: image_embeds -> image_feat (batch, projection), unit length."""

    def __init__(self, model):
        super().__init__()
        self.proj = model.vision_proj

    def forward(self, image_embeds):
        return nn.functional.normalize(self.proj(image_embeds[:, 0]), dim=-1)


class TextFeature(nn.Module):
    """ITC: input_ids, attention_mask -> text_feat (batch, projection), unit length (no image)."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.proj = model.text_encoder, model.text_proj

    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return nn.functional.normalize(self.proj(states[:, 0]), dim=-1)


def retrieval_parts(shapes: Shapes) -> list[PartSpec]:
    text_in = [TensorSpec("input_ids", "int64", ("batch", "text")),
               TensorSpec("attention_mask", "int64", ("batch", "text"))]
    projection = shapes.model.config.image_text_hidden_size
    image = shapes.image()

    def texts(batch, variant):
        found = shapes.question(batch, variant)
        return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

    return [
        PartSpec("itm", MatchHead, text_in + [image], [TensorSpec("itm_logits", "float32", ("batch", 2))],
                 shapes.question),
        PartSpec("image_proj", ImageFeature, [image], [TensorSpec("image_feat", "float32", ("batch", projection))],
                 shapes.embeds),
        PartSpec("text_proj", TextFeature, text_in, [TensorSpec("text_feat", "float32", ("batch", projection))], texts),
    ]


TASK_EXPORTS["retrieval"] = TaskExport(retrieval_parts, lambda text: {"context_length": text.max_position_embeddings})

"""BLIP visual question answering's parts (from ``BlipForQuestionAnswering``), after ``vision``:

- ``question``: input_ids, attention_mask (batch, question) and image_embeds -> question_embeds
  (batch, question, text hidden): the text encoder attending to the image.
- ``cross_kv`` and ``text_decoder`` as captioning's (:mod:`.blip_caption`), attending to the
  question's states instead of the image's.
"""

from __future__ import annotations

import torch

from ..spec import PartSpec, TensorSpec
from .blip import TASK_EXPORTS, QuestionEncoder, Shapes, TaskExport
from .blip_caption import decoder_parts, decoder_text


def vqa_parts(shapes: Shapes) -> list[PartSpec]:
    hidden = shapes.model.config.text_config.hidden_size
    states = TensorSpec("question_embeds", "float32", ("batch", "question", hidden))

    def question_states(batch, variant):
        with torch.no_grad():
            return {"question_embeds": QuestionEncoder(shapes.model)(**shapes.question(batch, variant))}

    question = PartSpec("question", QuestionEncoder, [TensorSpec("input_ids", "int64", ("batch", "question")),
                                                      TensorSpec("attention_mask", "int64", ("batch", "question")),
                                                      shapes.image()], [states], shapes.question)
    return [question] + decoder_parts(shapes, states, question_states, "question")


TASK_EXPORTS["vqa"] = TaskExport(vqa_parts, decoder_text)

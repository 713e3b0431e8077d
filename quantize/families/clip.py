"""CLIP calibration: real photos through the bundle's own preprocessing for ``vision``, and
zero-shot style prompts (or the calibration data set's captions) through its tokenizer for ``text``."""

from __future__ import annotations

from . import CALIBRATION

LABELS = ("cat", "dog", "astronaut", "rocket", "cup of coffee", "horse", "camera", "page of text",
          "the moon", "coins", "brick wall", "grass", "gravel", "microscope slide", "galaxy",
          "colour wheel", "logo", "retina", "car", "bird", "boat", "city at night", "mountain", "beach")
TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "a close-up picture of a {}", "{}")


def prompts(samples: int) -> list[str]:
    """``samples`` of the templates x labels, in an order where any first 24 have every label and
    any first few every template (a calibration of 32 sees both, short bare labels included)."""
    every = [TEMPLATES[(i // len(LABELS) + i) % len(TEMPLATES)].format(LABELS[i % len(LABELS)])
             for i in range(len(TEMPLATES) * len(LABELS))]
    return every[:samples]


@CALIBRATION.register("clip")
def calibration_feeds(pipeline, images: list, samples: int, captions=(), questions=()) -> dict[str, list[dict]]:
    """One feed per sample and part, batch 1, as the runtime will send them; the text tower sees a
    data set's captions where the calibration folder has them, else :func:`prompts`."""
    return {
        "vision": [pipeline.image_inputs([image]) for image in images[:samples]],
        "text": [pipeline.text_inputs([text]) for text in (list(captions[:samples]) or prompts(samples))],
    }


calibration_feeds.default_samples = 32

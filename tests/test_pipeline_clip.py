"""ClipPipeline: zero-shot classification and retrieval both ways, against the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevfm.runtime import InputError, load
from edgevfm.runtime.families.clip import ClipPipeline

from helpers import assert_close

LABELS = ["an astronaut", "a cat", "a rocket", "a cup of coffee"]


@pytest.fixture(scope="module")
def pipeline(clip_bundle):
    return load(clip_bundle, threads=1)


def test_load_returns_the_family_pipeline(pipeline):
    assert isinstance(pipeline, ClipPipeline)


def test_classify_matches_pytorch(pipeline, clip_checkpoint, photos):
    ranking = pipeline.classify(photos[0], LABELS)
    probs = dict(ranking)
    assert [p for _, p in ranking] == sorted(probs.values(), reverse=True)
    assert abs(sum(probs.values()) - 1.0) < 1e-5
    model, tok = clip_checkpoint.model, clip_checkpoint.assets["tokenizer"]
    pixels = clip_checkpoint.assets["image_processor"](photos[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, **tok(LABELS, padding="max_length", max_length=77, return_tensors="pt"))
    want = out.logits_per_image.softmax(-1)[0].numpy()
    assert_close([probs[label] for label in LABELS], want, 1e-4, what="zero-shot probabilities")


def test_embeddings_are_unit_rows_in_batches_larger_than_one_call(pipeline, photos):
    many = photos + photos  # 36 images: three calls of the vision part
    embeds = pipeline.embed_images(many)
    assert embeds.shape == (36, 16) and embeds.dtype == np.float32
    assert_close(np.linalg.norm(embeds, axis=1), np.ones(36), 1e-5, what="norms")
    assert_close(embeds[:18], embeds[18:], 1e-5, what="same image, other batch")


def test_retrieve_text_to_images(pipeline, photos):
    hits = pipeline.retrieve("a cat", photos[:5], k=3)
    assert len(hits) == 3 and all(0 <= h.index < 5 for h in hits)
    scores = (pipeline.embed_texts(["a cat"]) @ pipeline.embed_images(photos[:5]).T)[0]
    assert [h.index for h in hits] == list(np.argsort(-scores)[:3])
    assert_close([h.score for h in hits], np.sort(scores)[::-1][:3], 1e-6, what="scores")


def test_retrieve_image_to_texts(pipeline, photos, tmp_path):
    from PIL import Image

    path = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(path)
    by_path = pipeline.retrieve(str(path), LABELS, k=2)  # an existing file is an image query
    by_array = pipeline.retrieve(photos[1], LABELS, k=2)
    assert [h.item for h in by_path] == [h.item for h in by_array]
    assert by_path[0].item == pipeline.classify(photos[1], LABELS)[0][0]


def test_bad_inputs(pipeline, photos):
    with pytest.raises(InputError, match="label list is empty"):
        pipeline.classify(photos[0], [])
    with pytest.raises(InputError, match="non-empty strings"):
        pipeline.classify(photos[0], ["a cat", ""])
    with pytest.raises(InputError, match="gallery is empty"):
        pipeline.retrieve("a cat", [])
    with pytest.raises(InputError, match="k must be a positive integer, found 0"):
        pipeline.retrieve("a cat", photos[:2], k=0)
    with pytest.raises(InputError, match="no images given"):
        pipeline.embed_images([])
    with pytest.raises(InputError, match="no texts given"):
        pipeline.embed_texts([])

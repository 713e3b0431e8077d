"""SAM's torch-free pre- and post-processing match transformers' SamProcessor on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevfm.runtime import load
from edgevfm.runtime.masks import bilinear_matrix

from helpers import assert_close


@pytest.fixture(scope="module")
def predictor(sam_bundle):
    return load(sam_bundle)


@pytest.fixture(scope="module")
def processor(sam_checkpoint):
    from transformers import SamProcessor

    return SamProcessor(image_processor=sam_checkpoint.assets["image_processor"])


@pytest.mark.parametrize("index,crop", [(1, None), (0, (300, 512)), (9, (512, 200)), (2, (17, 301))])
def test_pixels_match_sam_processor(predictor, processor, photos, index, crop):
    image = photos[index] if crop is None else np.ascontiguousarray(photos[index][: crop[0], : crop[1]])
    from PIL import Image

    from edgevfm.runtime.image import preprocess, resized_size

    want = processor(images=Image.fromarray(image), return_tensors="np")  # greyscale too
    got = preprocess([image], predictor.manifest["preprocessing"])
    assert_close(got, want["pixel_values"], 1e-5, what=f"pixels of a {image.shape[:2]} image")
    assert list(resized_size(*image.shape[:2], predictor.manifest["preprocessing"]["resize"])) == \
        want["reshaped_input_sizes"][0].tolist()


@pytest.mark.parametrize("out_size,in_size", [(128, 32), (77, 32), (32, 32), (19, 64)])
def test_bilinear_matches_torch(out_size, in_size):
    x = np.random.default_rng(0).standard_normal((in_size, in_size)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], (out_size, out_size), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    m = bilinear_matrix(out_size, in_size)
    assert_close(m @ x @ m.T, want, 1e-5, what="bilinear resize")


def test_masks_at_image_size_match_post_process_masks(predictor, processor, photos):
    image = photos[1]  # 300 x 451
    predictor.set_image(image)
    logits = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    inputs = processor(images=image, return_tensors="pt")
    want = processor.post_process_masks(torch.from_numpy(logits)[None], inputs["original_sizes"],
                                        inputs["reshaped_input_sizes"], binarize=False)[0].numpy()
    got = predictor.to_image(logits)
    assert got.shape == (2, 3, 300, 451)
    assert_close(got, want, 1e-5, what="upscaled logits")

"""Torch-free preprocessing and tokenization reproduce transformers' CLIPImageProcessor (Pillow
path) and CLIPTokenizer outputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevfm.runtime import InputError, load
from edgevfm.runtime.image import load_image

from helpers import assert_close

PIXEL_ATOL = 1e-5  # float32 arithmetic in both; the resize itself is the same Pillow call


@pytest.fixture(scope="module")
def pipeline(clip_bundle):
    return load(clip_bundle)


def _cases(photos):
    rng = np.random.default_rng(0)
    rgba = np.concatenate([photos[1], rng.integers(0, 256, photos[1].shape[:2] + (1,), dtype=np.uint8)], axis=2)
    return {
        "landscape": photos[1],                     # chelsea, 300x451
        "portrait": np.ascontiguousarray(photos[0][:, :300]),
        "greyscale": photos[9],                     # camera, HW
        "rgba": rgba,
        "smaller than the crop": np.ascontiguousarray(photos[0][:100, :150]),
        "odd sizes": rng.integers(0, 256, (333, 227, 3), dtype=np.uint8),
    }


def test_pixels_match_transformers(pipeline, clip_checkpoint, photos):
    processor = clip_checkpoint.assets["image_processor"]
    for name, image in _cases(photos).items():
        want = processor(Image.fromarray(image), return_tensors="np")["pixel_values"]
        got = pipeline.image_inputs([image])["pixel_values"]
        assert got.dtype == np.float32
        assert_close(got, want, PIXEL_ATOL, what=f"pixels of the {name} image")


def test_image_kinds_agree(pipeline, photos, tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(path)
    as_path = pipeline.image_inputs([path])["pixel_values"]
    as_str = pipeline.image_inputs([str(path)])["pixel_values"]
    as_pil = pipeline.image_inputs([Image.fromarray(photos[1])])["pixel_values"]
    as_array = pipeline.image_inputs([photos[1]])["pixel_values"]
    for other in (as_str, as_pil, as_array):
        assert_close(other, as_path, 0.0, what="same image passed differently")


TEXTS = [
    "a photo of a cat",
    "A PHOTO   of\ta Dog!",
    "an astronaut riding a horse on the moon, photographed in 1969",
    "café crème – naïve façade 🚀",
    "",
    " ".join(["word"] * 120),  # longer than 77 tokens: must be truncated and still end in end-of-text
]


def test_token_ids_match_transformers(pipeline, clip_checkpoint):
    tokenizer = clip_checkpoint.assets["tokenizer"]
    want = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    got = pipeline.text_inputs(TEXTS)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    long = got["input_ids"][-1]
    assert got["attention_mask"][-1].sum() == 77 and long[-1] == tokenizer.eos_token_id
    assert long[0] == tokenizer.bos_token_id


def test_longest_padding(clip_bundle):
    from edgevfm.runtime.bundle import open_bundle
    from edgevfm.runtime.text import TextTokenizer

    bundle = open_bundle(clip_bundle)
    settings = dict(bundle.manifest["tokenizer"], padding="longest")
    out = TextTokenizer(bundle.file(settings["file"]), settings).encode(["a cat", "a photo of a dog"])
    assert out["input_ids"].shape[1] == out["attention_mask"].sum(1).max() < 77


def test_not_an_image(pipeline, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(InputError, match="is not an image Pillow can read"):
        pipeline.embed_images([fake])
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(InputError, match="found dict"):
        load_image({"pixels": 1})
    with pytest.raises(InputError, match="must be uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InputError, match="found shape"):
        load_image(np.zeros((4, 4, 5), dtype=np.uint8))

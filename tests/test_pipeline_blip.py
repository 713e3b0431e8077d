"""BLIP captioning (work in progress): captions equal transformers' generate token for token,
greedy and beam search, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from edgevfm.runtime import InputError, load
from edgevfm.runtime.image import preprocess


@pytest.fixture(scope="module")
def blip(blip_bundle):
    return load(blip_bundle, threads=1)


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(num_beams=3, no_repeat_ngram_size=2,
                                                                       length_penalty=0.6)],
                         ids=["greedy", "beams", "beams-ngram-penalty"])
def test_caption_equals_transformers(settings, blip, blip_checkpoint, photos):
    for image in photos[:2]:
        pixels = torch.from_numpy(preprocess([image], blip.manifest["preprocessing"]))
        with torch.no_grad():
            out = blip_checkpoint.model.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False, **settings)
        expected = blip_checkpoint.assets["tokenizer"].decode(out[0], skip_special_tokens=True)
        assert blip.caption(image, max_new_tokens=12, **settings) == expected


def test_empty_prompt_is_refused(blip, photos):
    with pytest.raises(InputError, match="a caption prompt must be a non-empty string or None"):
        blip.caption(photos[0], prompt="  ")


def test_caption_command(blip_bundle, blip, photos, tmp_path, capsys):
    from PIL import Image

    from edgevfm.runtime.cli import main

    Image.fromarray(photos[1]).save(tmp_path / "cat.png")
    assert main(["run", str(blip_bundle), "caption", str(tmp_path / "cat.png"), "--beams", "2",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == blip.caption(photos[1], max_new_tokens=8, num_beams=2) + "\n"
    with pytest.raises(SystemExit) as exited:
        main(["run", str(blip_bundle), "caption", str(tmp_path / "cat.png"), "--beams", "0"])
    assert exited.value.code == 2 and "--beams: expected an integer >= 1, found 0" in capsys.readouterr().err
    assert main(["run", str(blip_bundle), "caption", str(tmp_path / "missing.png")]) == 3

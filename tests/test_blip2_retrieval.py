"""BLIP-2 retrieval (Blip2ForImageTextRetrieval, the Q-Former's ITM and ITC heads) on the tiny
random preset: ``match`` equals transformers' ITM probability and ITC score, ``retrieve`` ranks as
transformers' scores do both ways, through the command line, every recipe and a process without
torch; a retrieval bundle asked to caption, or a generative one to match, says which to export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgevfm.runtime import InputError, load
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import UsageError

from helpers import assert_close
from test_torch_free import _run_without_torch

TEXTS = ["a photo of a cat", "an astronaut in a space suit", "a cup of coffee on a table"]
# transformers' scores against the runtime's (float32 graphs of the same arithmetic): the issue's bound
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def itm(blip2_itm_bundle):
    return load(blip2_itm_bundle, threads=1)


def _transformers(checkpoint, pipeline, image, text) -> tuple[float, float]:
    """(ITM probability, ITC score) of transformers' forward on the runtime's pixels and the tokenizer's ids."""
    from edgevfm.runtime.image import preprocess

    pixels = torch.from_numpy(preprocess([image], pipeline.manifest["preprocessing"]))
    inputs = checkpoint.assets["tokenizer"](text, return_tensors="pt")
    with torch.inference_mode():
        itm = checkpoint.model(pixel_values=pixels, **inputs, use_image_text_matching_head=True).logits_per_image
        itc = checkpoint.model(pixel_values=pixels, **inputs, use_image_text_matching_head=False).logits_per_image
    return float(torch.softmax(itm, -1)[0, 1]), float(itc[0, 0])


def test_match_equals_transformers(itm, blip2_itm_checkpoint, photos):
    for image in photos:
        for text in TEXTS:
            expected = _transformers(blip2_itm_checkpoint, itm, image, text)
            found = itm.match(image, text)
            assert_close([found["itm"], found["itc"]], expected, atol=TOLERANCE, what=text)
    assert type(itm).__name__ == "Blip2RetrievalPipeline" and itm.family == "blip2"


def test_retrieve_ranks_as_transformers_scores_do(itm, blip2_itm_checkpoint, photos):
    scores = np.asarray([[_transformers(blip2_itm_checkpoint, itm, image, text)[1] for text in TEXTS]
                         for image in photos])
    for t, text in enumerate(TEXTS):
        hits = itm.retrieve(text, photos, k=len(photos))
        assert [h.index for h in hits] == list(np.argsort(-scores[:, t], kind="stable"))
        assert_close([h.score for h in hits], np.sort(scores[:, t])[::-1], atol=TOLERANCE)
    for i, image in enumerate(photos):
        hits = itm.retrieve(image, TEXTS, k=2)
        assert [h.index for h in hits] == list(np.argsort(-scores[i], kind="stable")[:2])
    # the features the ranking reads: a unit feature per query of each image, one per text
    features = itm.image_features(photos[:2])
    assert features.shape == (2, 8, 16) and np.allclose(np.linalg.norm(features, axis=-1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(itm.text_features(TEXTS), axis=-1), 1, atol=1e-5)


def test_match_and_retrieve_on_the_command_line(blip2_itm_bundle, itm, photos, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(image)
    assert main(["run", str(blip2_itm_bundle), "--threads", "1", "match", str(image), TEXTS[0]]) == 0
    found = itm.match(photos[1], TEXTS[0])
    assert capsys.readouterr().out.strip() == f"itm {found['itm']:.4f}  itc {found['itc']:.4f}"
    assert main(["run", str(blip2_itm_bundle), "retrieve", "--query", str(image), "--texts", *TEXTS, "-k", "1"]) == 0
    best = itm.retrieve(photos[1], TEXTS, k=1)[0]
    assert capsys.readouterr().out.strip() == f"{best.score:8.4f}  {TEXTS[best.index]}".strip()


def test_a_retrieval_bundle_asked_to_caption_says_what_to_export(itm, blip2_itm_bundle, photos, tmp_path, capsys):
    with pytest.raises(UsageError, match="export a Blip2ForConditionalGeneration"):
        itm.caption(photos[0])
    image = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(image)
    assert main(["run", str(blip2_itm_bundle), "caption", str(image)]) == 2
    assert "matches images and texts" in capsys.readouterr().err


def test_a_generative_bundle_asked_to_match_says_what_to_export(blip2_bundle, photos):
    with pytest.raises(UsageError, match="export a Blip2ForImageTextRetrieval"):
        load(blip2_bundle, threads=1).match(photos[0], "a cat")


@pytest.mark.parametrize("text, message", [("  ", "a text must be a non-empty string"),
                                           ("cat " * 600, "over the model's context of 512")])
def test_a_bad_text_is_an_input_error(itm, photos, text, message):
    with pytest.raises(InputError, match=message):
        itm.match(photos[0], text)


def test_every_recipe_keeps_the_scores_close(blip2_itm_bundle, itm, photos, tmp_path):
    from edgevfm.quantize.api import quantize

    reference = [[itm.match(image, text) for text in TEXTS] for image in photos]
    for recipe, most in (("int8-dynamic", 0.01), ("int8-static", 0.01), ("ov-int8", 0.01), ("fp16", 0.001)):
        pipeline = load(quantize(blip2_itm_bundle, recipe, tmp_path / recipe, show_progress=False), threads=1)
        for row, image in zip(reference, photos):
            for expected, text in zip(row, TEXTS):
                found = pipeline.match(image, text)
                assert abs(found["itm"] - expected["itm"]) < most and abs(found["itc"] - expected["itc"]) < 5 * most


def test_match_runs_without_torch(blip2_itm_bundle, itm, photos):
    result = _run_without_torch(f"""
        import json, skimage.data
        from edgevfm.runtime import load
        p = load({str(blip2_itm_bundle)!r}, threads=1)
        print(json.dumps(p.match(skimage.data.chelsea(), {TEXTS[0]!r})))
    """)
    assert result.returncode == 0, result.stderr
    found, expected = json.loads(result.stdout), itm.match(photos[1], TEXTS[0])
    assert_close([found["itm"], found["itc"]], [expected["itm"], expected["itc"]], atol=1e-6)


def test_the_bench_measures_retrieval_against_transformers(blip2_itm_bundle, tmp_path):
    from edgevfm.benchmarks.api import bench

    result = bench([blip2_itm_bundle], reference="random:blip2-itm-tiny", out_dir=tmp_path / "report", runs=2)
    row = next(r for r in result["rows"] if r["kind"] == "bundle")
    assert row["accuracy"]["itm_probability_diff_max"] < TOLERANCE
    assert row["accuracy"]["itc_cosine_diff_max"] < TOLERANCE
    assert row["accuracy"]["text_to_image_top1_agreement"] == row["accuracy"]["image_to_text_top1_agreement"] == 1.0
    assert "match" in row["latency_ms"]

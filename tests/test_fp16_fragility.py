"""python -m edgevfm.benchmarks.fp16_fragility: each part in FP16 against FP32 PyTorch (here, with no
GPU, PyTorch's FP16 on the CPU, which the report says), and the rule that calls a part fragile."""

from __future__ import annotations

import json

import numpy as np

from edgevfm.benchmarks.fp16_fragility import MIN_COSINE, MIN_MASK_IOU, compare, main


def test_every_part_of_a_model_is_measured_and_the_report_says_where(tmp_path, capsys):
    assert main(["--model", "random:sam-tiny", "--model", "random:clip-tiny", "-o", str(tmp_path)]) == 0
    found = json.loads((tmp_path / "fp16-fragility.json").read_text())["results"]
    sam, clip = found
    assert set(sam["parts"]) == {"image_encoder", "prompt_decoder"} and set(clip["parts"]) == {"vision", "text"}
    assert sam["device"] == "cpu" and "no GPU here" in sam["fp16"]
    masks = sam["parts"]["prompt_decoder"]["low_res_masks"]
    assert 0.9 <= masks["mask_iou_worst"] <= 1.0 and 0.99 <= masks["cosine_worst"] <= 1.0
    # FP16 changed something (a comparison of FP32 with itself would prove nothing) and stayed finite
    assert 0 < clip["parts"]["vision"]["image_embeds"]["max_error_of_range"] < 0.01
    assert all(o["finite"] for part in sam["parts"].values() for o in part.values())
    assert "| prompt_decoder | low_res_masks |" in (tmp_path / "fp16-fragility.md").read_text()
    assert "random:sam-tiny: fragile in FP16" in capsys.readouterr().out


def test_a_part_is_fragile_below_the_floors_or_when_not_finite():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2, 64)).astype(np.float32)
    assert not compare(reference, reference + 1e-4, "embeds")["fragile"]
    noisy = compare(reference, reference + rng.normal(scale=0.2, size=reference.shape), "embeds")
    assert noisy["fragile"] and noisy["cosine_worst"] < MIN_COSINE
    flipped = reference.copy()
    flipped[:, :8] *= -1  # an eighth of the mask's pixels change side
    masks = compare(reference, flipped, "low_res_masks")
    assert masks["fragile"] and masks["mask_iou_worst"] < MIN_MASK_IOU
    overflow = reference.copy()
    overflow[0, 0] = np.inf  # FP16 overflows at 65504
    found = compare(reference, overflow, "embeds")
    assert found["fragile"] and not found["finite"]

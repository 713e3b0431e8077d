"""The benchmark: one run measures PyTorch and each bundle on the same inputs and writes the
report; accuracy figures are against the FP32 PyTorch reference."""

from __future__ import annotations

import json

import pytest

from edgevfm.benchmarks.api import SCHEMA, bench
from edgevfm.runtime import BundleError, InputError


@pytest.fixture(scope="module")
def results(clip_bundle, clip_recipe_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return bench([clip_bundle, clip_recipe_bundles["int8-dynamic"]], reference="random:clip-tiny", out_dir=out,
                 runs=3, warmup=1, batch=2, threads=1, show_progress=False)


def test_rows_and_measurements(results):
    assert results["schema"] == SCHEMA
    names = [r["name"] for r in results["rows"]]
    assert names == ["pytorch eager fp32", "onnxruntime fp32", "onnxruntime int8-dynamic"]
    for row in results["rows"]:
        assert set(row["latency_ms"]) == {"vision", "text"}
        for stats in row["latency_ms"].values():
            assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"] and stats["runs"] == 3
        assert row["load_s"] > 0 and row["first_call_ms"] > 0 and row["size_mb"] > 0
        assert row["peak_rss_mb"] >= row["rss_before_load_mb"] > 0
        assert row["throughput"]["batch"] == 2 and row["throughput"]["items_per_s"] > 0


def test_accuracy_against_the_reference(results):
    torch_row, fp32, int8 = results["rows"]
    assert torch_row["accuracy"]["image_cosine_worst"] == pytest.approx(1.0, abs=1e-6)
    # the FP32 bundle reproduces PyTorch end to end (its own preprocessing and tokenizer)
    assert fp32["accuracy"]["image_cosine_worst"] > 1 - 1e-5
    assert fp32["accuracy"]["text_cosine_worst"] > 1 - 1e-5
    assert fp32["accuracy"]["zero_shot_top1_agreement"] == 1.0
    assert 0.99 < int8["accuracy"]["image_cosine_mean"] < 1.0
    for key in ("text_to_image_recall@1_agreement", "image_to_text_recall@5_agreement"):
        assert 0.0 <= int8["accuracy"][key] <= 1.0


def test_report_files(results):
    from pathlib import Path

    report = Path(results["report"])
    text = report.read_text()
    assert "Produced by `edgevfm bench" in text and "random:clip-tiny" in text
    assert "## Machine" in text and "Instruction sets" in text
    assert "| onnxruntime int8-dynamic | int8 |" in text
    saved = json.loads((report.parent / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    assert (report.parent / "report.html").read_text().startswith("<!doctype html>")
    assert (report.parent / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_goal_verdict_is_computed(results):
    (goal,) = results["goals"]
    assert "int8-dynamic" in goal["goal"] and isinstance(goal["met"], bool) and "faster" in goal["measured"]


def test_labelled_folder_gives_top1_accuracy(clip_bundle, photos, tmp_path):
    from PIL import Image

    for label, picks in (("cat", [1, 3]), ("astronaut", [0])):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in picks:
            Image.fromarray(photos[i]).save(tmp_path / "data" / label / f"{i}.png")
    out = bench([clip_bundle], reference="random:clip-tiny", out_dir=tmp_path / "r", data=tmp_path / "data",
                runs=1, warmup=0, batch=1, threads=1, show_progress=False)
    accuracies = [r["accuracy"]["top1_accuracy"] for r in out["rows"]]
    assert accuracies[0] == pytest.approx(accuracies[1])  # FP32 bundle == PyTorch on the labelled set
    assert out["workload"]["labelled_images"] == 3 and out["workload"]["classes"] == 2


def test_reference_must_match_the_bundles_source(clip_bundle, tmp_path):
    with pytest.raises(BundleError, match="config differs from --reference"):
        bench([clip_bundle], reference="random:clip-vit-b32", out_dir=tmp_path, runs=1, warmup=0, batch=1,
              threads=1, show_progress=False)


def test_bad_arguments(clip_bundle, tmp_path):
    with pytest.raises(InputError, match="no bundles given"):
        bench([], reference="random:clip-tiny", out_dir=tmp_path)
    with pytest.raises(InputError, match="at least 1"):
        bench([clip_bundle], reference="random:clip-tiny", out_dir=tmp_path, runs=0)


def test_gemm_work_is_counted_from_the_layers(results):
    # clip-tiny vision, batch 1: patch Conv 32 ch x 7x7 outputs x (3x32x32) MACs, two encoder layers of
    # 50 tokens x (4 x 32x32 attention + 2 x 32x64 MLP) MACs, and the projection of one pooled token.
    macs = 32 * 49 * 3 * 32 * 32 + 2 * 50 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 16
    assert results["rows"][0]["gop"]["vision"] == pytest.approx(2 * macs / 1e9, rel=1e-9)
    peaks = results["machine"]["measured_peaks"]
    assert peaks["int8_gops"] > 0 and peaks["fp32_gflops"] > 0

"""The BLIP and BLIP-2 benchmarks: vision and whole caption (answer) latency, accuracy against
PyTorch; retrieval bundles refused up front."""

from __future__ import annotations

import pytest

from edgevfm.benchmarks.api import bench


@pytest.fixture(scope="module")
def results(blip_bundle, tmp_path_factory):
    from edgevfm.quantize.api import quantize

    int8 = quantize(blip_bundle, "int8-dynamic", tmp_path_factory.mktemp("blip-int8") / "b", show_progress=False)
    return bench([blip_bundle, int8], reference="random:blip-tiny", out_dir=tmp_path_factory.mktemp("blip-report"),
                 runs=2, warmup=1, batch=1, threads=1, show_progress=False)


def test_rows_parts_and_fp32_parity(results):
    torch_row, fp32, int8 = results["rows"]
    for row in (torch_row, fp32, int8):
        assert list(row["latency_ms"]) == ["vision", "caption"] and row["throughput"]["part"] == "tokens"
    accuracy = fp32["accuracy"]
    assert accuracy["next_token_top1_agreement"] == 1.0 and accuracy["kl_divergence_mean"] < 1e-6
    assert accuracy["exact_match"] == 1.0 and accuracy["prefix_agreement"] == 1.0
    assert int8["recipe"] == "int8-dynamic" and 0 <= int8["accuracy"]["kl_divergence_mean"]


def test_goals_name_the_margin(results):
    goals = [g for g in results["goals"] if "teacher-forced" in g["goal"]]
    assert len(goals) == 1 and "FP32 top-1 margin" in goals[0]["measured"] and "margin is >= 0.1" in goals[0]["goal"]
    assert any("faster than PyTorch eager" in g["goal"] for g in results["goals"])


def test_a_retrieval_bundle_is_refused_until_its_benchmark_exists(blip_itm_bundle, tmp_path):
    from edgevfm.runtime.errors import InputError

    with pytest.raises(InputError, match="measures captioning and VQA bundles so far; .* is a retrieval bundle"):
        bench([blip_itm_bundle], reference="random:blip-itm-tiny", out_dir=tmp_path / "r", runs=1, warmup=0,
              batch=1, threads=1, show_progress=False)


@pytest.mark.parametrize("model, bundle", [("random:blip-vqa-tiny", "blip_vqa_bundle"),
                                           ("random:blip2-tiny", "blip2_bundle")])
def test_vqa_and_blip2_bundles_measure_against_pytorch(model, bundle, request, tmp_path):
    """FP32 bundles agree with PyTorch exactly: the runners feed both the same question (prompt)."""
    found = bench([request.getfixturevalue(bundle)], reference=model, out_dir=tmp_path / "r", runs=1, warmup=0,
                  batch=1, threads=1, show_progress=False)
    torch_row, fp32 = found["rows"]
    whole = "answer" if "vqa" in model else "caption"
    assert list(torch_row["latency_ms"]) == list(fp32["latency_ms"]) == ["vision", whole]
    accuracy = fp32["accuracy"]
    assert accuracy["next_token_top1_agreement"] == 1.0 and accuracy["kl_divergence_mean"] < 1e-6
    assert accuracy["exact_match"] == 1.0
    assert f"| {whole} p50 / p90 / p99 ms |" in (tmp_path / "r" / "report.md").read_text()

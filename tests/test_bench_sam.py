"""The SAM benchmark: encoder and per-prompt decoder latency, automatic-mask time, mask IoU
against the PyTorch reference, and ground-truth IoU when a dataset is given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevfm.benchmarks.api import bench


@pytest.fixture(scope="module")
def results(sam_bundle, sam_recipe_bundles, photos, tmp_path_factory):
    data = tmp_path_factory.mktemp("sam-data")
    Image.fromarray(photos[1]).save(data / "cat.png")
    truth = np.zeros(photos[1].shape[:2], np.uint8)
    truth[40:260, 90:320] = 255
    Image.fromarray(truth).save(data / "cat.mask.png")
    return bench([sam_bundle, sam_recipe_bundles["sam-int8"]], reference="random:sam-tiny", data=data,
                 out_dir=tmp_path_factory.mktemp("sam-report"), runs=2, warmup=1, batch=2, threads=1,
                 show_progress=False)


def test_latency_parts_and_automatic_masks(results):
    torch_row, fp32, int8 = results["rows"]
    assert list(fp32["latency_ms"]) == ["image_encoder", "decoder, 1 point", "decoder, 1 box", "decoder, 32 points"]
    assert fp32["throughput"]["part"] == "prompts" and fp32["throughput"]["batch"] == 16
    assert fp32["extra"]["automatic_masks_s"] > 0 and fp32["extra"]["automatic_masks_found"] >= 1
    assert torch_row["extra"] == {}
    assert torch_row["gop"]["image_encoder"] > 0


def test_mask_accuracy(results):
    torch_row, fp32, int8 = results["rows"]
    assert torch_row["accuracy"]["mask_iou_worst"] == 1.0
    assert fp32["accuracy"]["mask_iou_mean"] > 0.999  # same graph, pixels at logit ~0 may flip
    assert fp32["accuracy"]["iou_score_diff_max"] < 1e-4
    assert 0.5 < int8["accuracy"]["mask_iou_mean"] <= 1.0
    for kind in ("point", "box"):  # the one mask, prompted by its centre point and by its box
        key = f"{kind}_miou"
        assert torch_row["accuracy"][key] == pytest.approx(fp32["accuracy"][key], abs=1e-3)
        assert 0.0 <= fp32["accuracy"][key] <= 1.0
        assert fp32["accuracy"][f"{key} drop"] == pytest.approx(torch_row["accuracy"][key] - fp32["accuracy"][key])
        assert torch_row["accuracy"][f"{key} drop"] == 0.0
    assert results["workload"]["ground_truth"].startswith("1 images, 1 masks")


def test_goals(results):
    decoder = [g for g in results["goals"] if "decoder p50 under 10 ms" in g["goal"]]
    encoder = [g for g in results["goals"] if "encoder at least 2x faster than FP32 ONNX" in g["goal"]]
    assert len(decoder) == 2 and len(encoder) == 1  # every bundle's decoder; the INT8 bundle's encoder
    assert all(g["measured"].endswith(" ms") or " ms; " in g["measured"] for g in decoder)
    # the memory goal is the encoder run's, as the issue states it, with the whole row's beside it
    (memory,) = [g for g in results["goals"] if "the encoder run within 3.5 GB" in g["goal"]]
    int8 = results["rows"][2]
    assert memory["measured"].startswith(f"{int8['first_part_peak_rss_mb']:.0f} MB")
    assert f"peaked at {int8['peak_rss_mb']:.0f} MB" in memory["measured"]


def test_missed_goals_say_why_in_the_rows_precisions():
    """The encoder's miss is explained by its work at the row's precisions against the measured
    peaks, and a low mask IoU by the decoder's own precision (not always INT8)."""
    from edgevfm.benchmarks.families.sam import SamBench

    def lat(encoder, decoder):
        return {"image_encoder": {"p50": encoder}, "decoder, 1 point": {"p50": decoder}}

    torch_row = {"kind": "pytorch", "gop": {"image_encoder": 700.0, "decoder, 1 point": 3.0},
                 "product_gop": {"image_encoder": 900.0, "decoder, 1 point": 3.1}, "latency_ms": lat(9000, 40)}
    fp32 = {"kind": "bundle", "name": "onnxruntime fp32", "recipe": None, "backend": "onnxruntime",
            "precision": "fp32", "parts": {"image_encoder": "fp32", "prompt_decoder": "fp32"},
            "latency_ms": lat(6000, 30), "accuracy": {"mask_iou_mean": 1.0}}
    bf16 = {"kind": "bundle", "name": "openvino ov-bf16", "recipe": "ov-bf16", "backend": "openvino",
            "precision": "bf16", "parts": {"image_encoder": "bf16", "prompt_decoder": "bf16"},
            "latency_ms": lat(2500, 25), "accuracy": {"mask_iou_mean": 0.6},
            "first_part_peak_rss_mb": 1200, "peak_rss_mb": 3000}
    int8 = dict(bf16, name="openvino ov-int8", recipe="ov-int8", precision="int8",
                parts={"image_encoder": "int8", "prompt_decoder": "int8"}, accuracy={"mask_iou_mean": 0.97})
    peaks = {"int8_gops": 800.0, "fp32_gflops": 200.0}
    goals = {g["goal"]: g for g in SamBench.goals(None, [torch_row, fp32, bf16, int8], peaks)}
    speed = "encoder at least 3x faster than FP32 ONNX, mean mask IoU >= 0.95 against FP32"
    low = goals[f"openvino ov-bf16: {speed}"]
    assert not low["met"] and "the decoder is BF16 too: random weights" in low["measured"]
    assert "(BF16): the goal allows 2000.0 ms (no BF16 peak is measured here)" in low["measured"]
    # INT8 Linear/Conv 700 GOP at 800 GOP/s + FP32 attention 200 GOP at 200 GFLOP/s = 1875 ms < 2000 allowed
    slow = goals[f"openvino ov-int8: {speed}"]
    assert not slow["met"] and "takes 1875.0 ms, within the 2000.0 ms the goal allows" in slow["measured"]
    assert "decoder is" not in slow["measured"]  # IoU 0.97 is within the goal
    # with ground truth (a trained preset), the low agreement is put beside what it costs on the task
    trained = dict(bf16, accuracy={"mask_iou_mean": 0.6, "point_miou drop": 0.0034, "box_miou drop": -0.0002})
    (task,) = [g for g in SamBench.goals(None, [torch_row, fp32, trained], peaks) if speed in g["goal"]]
    assert "the decoder is BF16 too; against the ground truth the row loses 0.0034 point and -0.0002 box mIoU" \
        in task["measured"] and "random" not in task["measured"]
    decoder = goals["onnxruntime fp32: decoder p50 under 10 ms per single-point prompt"]
    # 3.0 GOP + 0.1 GOP in FP32 at 200 GFLOP/s = 15.5 ms
    assert "takes 15.5 ms, more than the 10.0 ms the goal allows" in decoder["measured"]


def test_the_memory_goal_is_the_encoder_runs_peak_against_3_5_gb():
    """1200 MB after loading and encoding meets it even when the whole row peaked at 4000; 3600
    misses it."""
    from edgevfm.benchmarks.families.sam import SamBench

    def row(encoder_peak):
        return {"kind": "bundle", "name": f"openvino ov-int8 {encoder_peak}", "recipe": "ov-int8", "backend": "openvino",
                "precision": "int8", "parts": {"image_encoder": "int8", "prompt_decoder": "fp32"},
                "latency_ms": {"image_encoder": {"p50": 100.0}, "decoder, 1 point": {"p50": 5.0}},
                "accuracy": {"mask_iou_mean": 0.99}, "first_part_peak_rss_mb": encoder_peak, "peak_rss_mb": 4000}

    torch_row = {"kind": "pytorch", "latency_ms": {"image_encoder": {"p50": 900.0}, "decoder, 1 point": {"p50": 9.0}}}
    goals = SamBench.goals(None, [torch_row, row(1200), row(3600)], {"int8_gops": 800.0, "fp32_gflops": 200.0})
    memory = {g["goal"].split(":")[0]: g for g in goals if "within 3.5 GB" in g["goal"]}
    assert memory["openvino ov-int8 1200"]["met"] is True and memory["openvino ov-int8 3600"]["met"] is False
    assert memory["openvino ov-int8 1200"]["measured"].startswith("1200 MB; the whole row (every prompt, automatic masks) "
                                                                   "peaked at 4000 MB")

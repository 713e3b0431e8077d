"""``--recipe auto``: candidates of both backends are measured here (latency in interleaved rounds,
accuracy against the FP32 bundle on the family benchmark's workload), the fastest within the floors
is written, and the manifest records every candidate's figures and why the winner won."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevfm.quantize.api import quantize
from edgevfm.benchmarks.auto import quantize_auto
from edgevfm.runtime import load
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import UsageError

CANDIDATES = ["fp32", "int8-dynamic", "fp16", "ov-fp32", "ov-int8"]


def _record(bundle):
    return json.loads((bundle / "manifest.json").read_text())["recipe"]


@pytest.fixture(scope="module")
def chosen(clip_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "auto"
    return quantize_auto(clip_bundle, out, candidates=CANDIDATES, min_cosine=0.99, max_drop=0.5, samples=4,
                         threads=1, runs=3, rounds=2, show_progress=False)


def test_the_fastest_candidate_within_the_floors_wins_and_says_why(chosen):
    recipe = _record(chosen)
    auto = recipe["auto"]
    assert recipe["name"] == "auto" and recipe["chosen"] == auto["chosen"]
    found = {c["recipe"]: c for c in auto["candidates"]}
    assert sorted(found) == sorted(CANDIDATES)
    for c in found.values():
        assert c["latency_ms"] > 0 and sum(c["parts_ms"].values()) == pytest.approx(c["latency_ms"])
        assert c["spread"] >= 0 and c["passed"] == (c["cosine"] >= 0.99 and c["drop"] <= 0.5)
    assert found["fp32"]["cosine"] == pytest.approx(1.0, abs=1e-6) and found["fp32"]["passed"]
    winner = min((c for c in found.values() if c["passed"]), key=lambda c: c["latency_ms"])
    assert auto["chosen"] == winner["recipe"]
    assert auto["why"].startswith(f"fastest of {sum(c['passed'] for c in found.values())} candidates within the "
                                  "floors (cosine >= 0.9900, drop <= 0.500)")
    assert f"{winner['latency_ms']:.2f} ms" in auto["why"]
    assert auto["floors"] == {"min_cosine": 0.99, "max_drop": 0.5}
    assert auto["measured"]["rounds"] == 2 and auto["measured"]["instruction_sets"] is not None


def test_the_written_bundle_is_the_winner(chosen, clip_bundle, photos):
    manifest = json.loads((chosen / "manifest.json").read_text())
    backend = "openvino" if manifest["recipe"]["chosen"].startswith("ov-") else "onnxruntime"
    assert {p["backend"] for p in manifest["parts"].values()} == {backend}
    ref, got = load(clip_bundle).embed_images(photos[:3]), load(chosen).embed_images(photos[:3])
    assert np.mean(np.sum(ref * got, axis=1)) >= 0.99
    from edgevfm.runtime.info import bundle_info

    assert bundle_info(chosen)["recipe"].startswith(f"auto, chose {manifest['recipe']['chosen']}: fastest of ")


def test_a_strict_floor_keeps_fp32(clip_bundle, tmp_path):
    out = quantize_auto(clip_bundle, tmp_path / "auto", candidates=["fp32", "int4", "int8-dynamic"],
                        min_cosine=0.999999, max_drop=0.0, threads=1, runs=2, rounds=1, show_progress=False)
    auto = _record(out)["auto"]
    assert auto["chosen"] == "fp32"
    for c in auto["candidates"]:
        assert c["passed"] == (c["recipe"] == "fp32"), c
    fp32 = next(c for c in auto["candidates"] if c["recipe"] == "fp32")
    for c in auto["candidates"]:  # a faster candidate that missed the floor is named, with its figures
        assert (f"{c['recipe']} {c['latency_ms']:.2f} ms (cosine" in auto["why"]) == (c["latency_ms"] < fp32["latency_ms"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert {p["precision"] for p in manifest["parts"].values()} == {"fp32"}


def test_a_candidate_that_cannot_be_written_is_recorded_as_skipped(llava_bundle, tmp_path):
    """LLaVA's builder graph has ONNX Runtime's own operators: no OpenVINO candidate, and why."""
    out = quantize_auto(llava_bundle, tmp_path / "auto", candidates=["fp32", "ov-fp32"], threads=1, runs=1,
                        rounds=1, show_progress=False)
    found = {c["recipe"]: c for c in _record(out)["auto"]["candidates"]}
    assert found["fp32"]["passed"] and _record(out)["auto"]["chosen"] == "fp32"
    assert "--llm-graph plain" in found["ov-fp32"]["skipped"]


def test_floors_are_checked(clip_bundle, sam_bundle, tmp_path):
    with pytest.raises(UsageError, match="a sam bundle has no embedding to compare by cosine; its floor is --max-drop"):
        quantize(sam_bundle, "auto", tmp_path / "a", min_cosine=0.99)
    with pytest.raises(UsageError, match=r"--max-drop must be in \[0, 1\), found 2"):
        quantize(clip_bundle, "auto", tmp_path / "a", max_drop=2)
    with pytest.raises(UsageError, match="min_cosine, max_drop, reuse, data and max_task_drop are for recipe 'auto'"):
        quantize(clip_bundle, "int8-dynamic", tmp_path / "a", min_cosine=0.99)
    with pytest.raises(UsageError, match=r"unknown candidate recipes \['llava-int4'\]"):
        quantize_auto(clip_bundle, tmp_path / "a", candidates=["fp32", "llava-int4"])
    assert not (tmp_path / "a").exists()


def test_the_command_line_runs_every_candidate(clip_bundle, clip_recipe_bundles, tmp_path, capsys):
    """Every recipe of the family is a candidate; those in --reuse are measured as they are, the
    rest are made here."""
    from edgevfm.quantize.recipes import recipes_for

    reuse = tmp_path / "made"
    reuse.mkdir()
    made_here = ("fp16", "int8-dynamic")  # quick to make; the session's bundles stand for the rest
    reused = [r for r in recipes_for("clip") if r not in made_here]
    for recipe in reused:
        (reuse / recipe).symlink_to(clip_recipe_bundles[recipe], target_is_directory=True)
    code = main(["quantize", str(clip_bundle), "--recipe", "auto", "-o", str(tmp_path / "auto"), "--max-drop", "0.5",
                 "--min-cosine", "0.9", "--samples", "2", "--threads", "1", "--reuse", str(reuse)])
    assert code == 0 and f"wrote {tmp_path / 'auto'}" in capsys.readouterr().out
    auto = _record(tmp_path / "auto")["auto"]
    assert sorted(c["recipe"] for c in auto["candidates"]) == sorted(["fp32"] + recipes_for("clip"))
    assert {c["recipe"]: c["reused"] for c in auto["candidates"] if "reused" in c} == {r: str(reuse / r) for r in reused}


def test_reuse_is_checked(clip_bundle, sam_bundle, sam_recipe_bundles, tmp_path):
    with pytest.raises(UsageError, match="--reuse expects a folder of bundles named after their recipes"):
        quantize(clip_bundle, "auto", tmp_path / "a", reuse=tmp_path / "absent")
    with pytest.raises(UsageError, match="reuse, data and max_task_drop are for recipe 'auto'"):
        quantize(clip_bundle, "int8-dynamic", tmp_path / "a", reuse=tmp_path)
    wrong = tmp_path / "wrong"  # a SAM bundle where CLIP's int8-dynamic should be
    wrong.mkdir()
    (wrong / "int8-dynamic").symlink_to(sam_recipe_bundles["fp16"], target_is_directory=True)
    with pytest.raises(UsageError, match="prebuilt candidate .* is not 'int8-dynamic' of .*made by 'fp16'"):
        quantize(clip_bundle, "auto", tmp_path / "a", reuse=wrong)
    assert not (tmp_path / "a").exists()


def test_a_task_floor_holds_candidates_to_their_task_score(clip_bundle, tmp_path):
    """--data with --max-task-drop: each candidate's zero-shot top-1 on the data set against the FP32
    bundle's; a floor of 0 keeps only candidates that lose nothing."""
    from edgevfm.benchmarks.scene_data import write

    data = write("classify", tmp_path / "scenes", 12)
    out = quantize_auto(clip_bundle, tmp_path / "auto", candidates=["fp32", "int8-dynamic", "fp16"], max_drop=0.9,
                        data=data, max_task_drop=0.0, threads=1, runs=2, rounds=1, show_progress=False)
    auto = _record(out)["auto"]
    assert auto["floors"] == {"min_cosine": None, "max_drop": 0.9, "max_task_drop": 0.0} and auto["data"] == str(data)
    for c in auto["candidates"]:
        fp32 = next(f for f in auto["candidates"] if f["recipe"] == "fp32")["accuracy"]
        drops = [fp32[k] - c["accuracy"][k] for k in ("top1_accuracy", "text_to_image_recall@1", "image_to_text_recall@1")]
        assert c["task_drop"] == pytest.approx(max(drops))
        assert c["passed"] == (c["drop"] <= 0.9 and c["task_drop"] <= 1e-12)
    assert "task drop <= 0.000" in auto["why"]


def test_a_task_floor_replaces_the_agreement_floors_the_user_did_not_ask_for():
    """With a task floor, agreement with FP32 counts only where given too (it overstates a loss: the
    SAM shapes report's int8-dynamic agrees 0.93 with FP32's masks and loses 0.002 mIoU)."""
    from edgevfm.benchmarks.auto import floors_for, passes
    from edgevfm.benchmarks.families import BENCH

    bench = BENCH.get("sam")
    floors = floors_for(bench, "sam", None, None, max_task_drop=0.01)
    assert floors == {"min_cosine": None, "max_drop": None, "max_task_drop": 0.01}
    assert passes({"cosine": None, "drop": 0.07, "task_drop": 0.002}, floors)
    assert not passes({"cosine": None, "drop": 0.0, "task_drop": 0.02}, floors)
    assert floors_for(bench, "sam", None, 0.05, max_task_drop=0.01)["max_drop"] == 0.05
    assert floors_for(bench, "sam", None, None) == bench.auto_floor


def test_a_task_floor_needs_ground_truth(clip_bundle, tmp_path):
    with pytest.raises(UsageError, match=r"--max-task-drop needs --data .*'random:clip-tiny' is not a preset "
                                         r"trained on the scenes"):
        quantize_auto(clip_bundle, tmp_path / "auto", max_task_drop=0.01, show_progress=False)
    with pytest.raises(UsageError, match=r"--max-task-drop must be in \[0, 1\), found 2"):
        quantize_auto(clip_bundle, tmp_path / "auto", max_task_drop=2, data=tmp_path, show_progress=False)
    with pytest.raises(UsageError, match=r"min_cosine, max_drop, reuse, data and max_task_drop are for recipe 'auto'"):
        quantize(clip_bundle, "int8-dynamic", tmp_path / "x", max_task_drop=0.01)

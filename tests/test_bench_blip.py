"""The BLIP and BLIP-2 benchmarks: vision and whole caption (answer) latency, accuracy against
PyTorch; task scores with annotations."""

from __future__ import annotations

import pytest

from edgevfm.benchmarks.api import bench


@pytest.fixture(scope="module")
def results(blip_bundle, photos, tmp_path_factory):
    """BLIP's caption bench with an INT8 row, on two photos with COCO captions."""
    from edgevfm.quantize.api import quantize

    int8 = quantize(blip_bundle, "int8-dynamic", tmp_path_factory.mktemp("blip-int8") / "b", show_progress=False)
    data = _annotated(tmp_path_factory.mktemp("blip-data") / "d", photos, vqa=False)
    out = tmp_path_factory.mktemp("blip-report")
    return bench([blip_bundle, int8], reference="random:blip-tiny", data=data, out_dir=out, runs=2, warmup=1, batch=1,
                 threads=1, show_progress=False) | {"out": out}


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


def test_retrieval_measures_itm_itc_agreement_and_task_scores(blip_itm_bundle, photos, tmp_path):
    """A retrieval bundle against PyTorch: ITM probability, ITC cosine and top-1 agreement both ways.
    Caption annotations (image i goes with its first caption) add ITM accuracy over true and false
    pairs and recall@1 both ways; the FP32 bundle scores what PyTorch scores. VQA ones are refused."""
    from edgevfm.quantize.api import quantize
    from edgevfm.runtime.errors import InputError

    int8 = quantize(blip_itm_bundle, "int8-dynamic", tmp_path / "int8", show_progress=False)
    data = _annotated(tmp_path / "d", photos, False)
    found = bench([blip_itm_bundle, int8], reference="random:blip-itm-tiny", data=data, out_dir=tmp_path / "r", runs=1,
                  warmup=0, batch=1, threads=1, show_progress=False)
    torch_row, fp32, quantized = found["rows"]
    assert list(torch_row["latency_ms"]) == list(fp32["latency_ms"]) == ["vision", "match"]
    exact = fp32["accuracy"]
    assert exact["itm_probability_diff_max"] < 1e-5 and exact["itc_cosine_diff_max"] < 1e-5
    assert exact["text_to_image_top1_agreement"] == exact["image_to_text_top1_agreement"] == 1.0
    assert 0 < quantized["accuracy"]["itc_cosine_diff_max"] < 0.1  # INT8 moves the cosines, a little
    goal = next(g for g in found["goals"] if "ITM probability within" in g["goal"])
    assert "FP32 ITC top-1 margin" in goal["measured"]
    for key in ("itm_accuracy", "text_to_image_recall@1", "image_to_text_recall@1"):
        assert 0 <= exact[key] <= 1 and exact[key] == pytest.approx(torch_row["accuracy"][key])
        assert exact[f"{key} drop"] == pytest.approx(0.0)
    with pytest.raises(InputError, match="--data holds vqa annotations, but the bundles are retrieval bundles: give a "
                                         "COCO-captions annotation folder"):
        bench([blip_itm_bundle], reference="random:blip-itm-tiny", data=_annotated(tmp_path / "q", photos, True),
              out_dir=tmp_path / "r2", runs=1, warmup=0, batch=1, threads=1, show_progress=False)


def test_false_pairs_are_other_texts():
    from edgevfm.benchmarks.families.blip_retrieval import negatives, task_scores
    import numpy as np

    assert negatives(["a", "b", "c", "d"]) == [2, 3, 0, 1]
    assert negatives(["a", "b", "a", "c"]) == [3, 3, 1, 1]  # "a" never stands against "a" while another exists
    scores = {"itc": np.array([[0.9, 0.1], [0.8, 0.2]]), "itm_true": np.array([0.9, 0.4]),
              "itm_false": np.array([0.1, 0.7])}
    assert task_scores(scores) == {"itm_accuracy": 0.5, "text_to_image_recall@1": 1.0, "image_to_text_recall@1": 0.5}


def _annotated(folder, photos, vqa: bool):
    """Two photos with COCO captions, or VQA questions and human answers."""
    import json

    from PIL import Image

    folder.mkdir()
    for i, photo in enumerate(photos[:2]):
        Image.fromarray(photo).save(folder / f"COCO_val2014_{i + 1:012d}.png")
    if vqa:
        (folder / "questions.json").write_text(json.dumps({"questions": [
            {"image_id": i, "question": "what is it?", "question_id": 10 * i} for i in (1, 2)]}))
        (folder / "annotations.json").write_text(json.dumps({"annotations": [
            {"question_id": 10 * i, "image_id": i, "answers": [{"answer": "a cat"}] * 3} for i in (1, 2)]}))
    else:
        (folder / "captions.json").write_text(json.dumps({"annotations": [
            {"image_id": i, "caption": c} for i in (1, 2) for c in ("a cat on a couch", "a photo of a cat")]}))
    return folder


def _equal_to_pytorch(found: dict, out, metric: str) -> None:
    """FP32 bundles agree with PyTorch exactly (the runners feed both the same question or prompt),
    on the fixed workload and on the annotated items' task scores."""
    torch_row, fp32 = found["rows"][:2]
    whole = "answer" if metric == "vqa_accuracy" else "caption"  # questions make BLIP-2 answer
    assert list(torch_row["latency_ms"]) == list(fp32["latency_ms"]) == ["vision", whole]
    assert fp32["accuracy"]["next_token_top1_agreement"] == 1.0 and fp32["accuracy"]["kl_divergence_mean"] < 1e-6
    assert fp32["accuracy"]["exact_match"] == 1.0
    assert f"| {whole} p50 / p90 / p99 ms |" in (out / "report.md").read_text()
    assert metric in torch_row["accuracy"] and torch_row["accuracy"][metric] == pytest.approx(fp32["accuracy"][metric])
    assert fp32["accuracy"]["bleu4_vs_fp32"] == pytest.approx(torch_row["accuracy"]["bleu4_vs_fp32"])
    assert found["workload"]["annotated"] == f"2 {'vqa' if metric == 'vqa_accuracy' else 'caption'} items"


def test_caption_annotations_give_cider_equal_for_fp32_and_pytorch(results):
    _equal_to_pytorch(results, results["out"], "cider")


@pytest.mark.parametrize("model, bundle, metric", [("random:blip-vqa-tiny", "blip_vqa_bundle", "vqa_accuracy"),
                                                   ("random:blip2-tiny", "blip2_bundle", "cider"),
                                                   ("random:blip2-t5-tiny", "blip2_t5_bundle", "vqa_accuracy")])
def test_annotations_give_task_accuracy_equal_for_fp32_and_pytorch(model, bundle, metric, request, photos, tmp_path):
    data = _annotated(tmp_path / "data", photos, vqa=metric == "vqa_accuracy")
    found = bench([request.getfixturevalue(bundle)], reference=model, data=data, out_dir=tmp_path / "r", runs=1,
                  warmup=0, batch=1, threads=1, show_progress=False)
    _equal_to_pytorch(found, tmp_path / "r", metric)


def test_annotations_of_another_task_are_refused(blip_bundle, photos, tmp_path):
    from edgevfm.runtime.errors import InputError

    data = _annotated(tmp_path / "data", photos, vqa=True)
    with pytest.raises(InputError, match="--data holds vqa annotations, but the bundles are caption bundles"):
        bench([blip_bundle], reference="random:blip-tiny", data=data, out_dir=tmp_path / "r", runs=1, warmup=0,
              batch=1, threads=1, show_progress=False)
    with pytest.raises(InputError, match="no annotations in"):
        bench([blip_bundle], reference="random:blip-tiny", data=tmp_path, out_dir=tmp_path / "r2", runs=1,
              warmup=0, batch=1, threads=1, show_progress=False)

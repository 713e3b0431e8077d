"""The presets trained here on generated scenes (training/*.py): each ships as the bytes its
preset.json records, exports through the path a user's folder takes, and scores above its floor on
held-out scenes (a seed training never reads) through the runtime with torch unimportable.

The floors guard what the shipped weights reach, less a margin for the small sample; the committed
reports measure the full held-out split against the targets (benchmarks/reports/<preset>), and say
by how much a target is missed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevfm.benchmarks.scene_data import write
from edgevfm.export.presets import card, verify

from test_torch_free import _run_without_torch

# BLIP's floors on the small samples below, what the shipped weights reach there less a margin: CIDEr-D
# 4.87 and 11 of 20 captions word for word, VQA accuracy 0.85 on 46 questions, ITM accuracy 0.95 on 40 pairs
CAPTION_CIDER, CAPTION_EXACT, VQA_ACCURACY, ITM_ACCURACY = 4.0, 0.4, 0.75, 0.85
# BLIP-2's on the same kind of samples: what the shipped weights reach there (VQA accuracy 0.85 on 46 questions,
# CIDEr-D 4.58 on 10 scenes), less a margin
BLIP2_VQA_ACCURACY, BLIP2_CIDER = 0.75, 3.5
# LLaVA's: what the shipped weights reach on the sample below (VQA accuracy 0.804 on 46 questions), less a margin
# of three answers (an AVX2 CPU's float sums may flip a close one)
LLAVA_VQA_ACCURACY = 0.73
PRESETS = ("clip-shapes", "sam-shapes", "blip-shapes", "blip-vqa-shapes", "blip-itm-shapes", "blip2-shapes",
           "llava-shapes")


@pytest.mark.parametrize("name", PRESETS)
def test_a_shipped_preset_is_the_recorded_bytes_and_says_how_it_was_made(name):
    meta = card(name)
    folder = verify(name)
    script = "blip_shapes" if name.startswith("blip-") else name.replace("-", "_")  # one run trains BLIP's three
    assert meta["command"].startswith(f"python training/{script}.py")
    assert {"model.safetensors", "config.json", "loss.tsv"} <= set(meta["sha256"])
    assert (folder / "model.safetensors").stat().st_size <= 20e6
    losses = [float(line.split("\t")[1]) for line in (folder / "loss.tsv").read_text().splitlines()[1:]]
    # it learnt: the mean loss of the log's last tenth against its first tenth (one batch's loss is noisy:
    # a continued sam-shapes run once logged 0.566 first and 0.718 last). A run that goes on from an earlier
    # one starts from that one's loss and records it: 0.78 (llava-shapes) now, where one that learnt nothing
    # stays near 1 or above (its fresh schedule's warm-up raises the loss first)
    tenth = max(1, len(losses) // 10)
    ratio = np.mean(losses[-tenth:]) / np.mean(losses[:tenth])
    assert ratio < (0.9 if "continued_from" in meta else 0.5), ratio
    if "continued_from" in meta:
        assert meta["continued_from"]["command"].startswith(f"python training/{script}.py")


# tensors a run leaves as they were made, on purpose: llava-shapes reads its tower's layer -2, so the
# ViTModel's pooler (its bias made zeros) is never used
UNUSED = {"llava-shapes": {"vision_tower.pooler.dense.bias"}}


@pytest.mark.parametrize("name", PRESETS)
def test_every_tensor_a_run_trains_moved_from_its_constant_start(name):
    """No layer norm still at ones, no bias or position table still at zeros: a part of the network
    that never learnt (sam-shapes' image encoder once did not: transformers' get_image_embeddings
    runs under torch.no_grad, so training through it left the whole tower as drawn)."""
    from safetensors.numpy import load_file

    weights = load_file(verify(name) / "model.safetensors")
    constant = sorted(key for key, t in weights.items()
                      if t.size > 1 and np.issubdtype(t.dtype, np.floating) and np.all(t == t.flat[0])
                      and t.flat[0] in (0.0, 1.0))
    assert set(constant) == UNUSED.get(name, set()), constant[:10]


@pytest.mark.parametrize("name", [n for n in PRESETS if "vision_from_sha256" in card(n)])
def test_a_preset_started_from_another_names_weights_the_recorded_commands_rebuild(name):
    """The weights a tower started from are the named preset's as shipped, or the run that preset
    went on from (its ``continued_from``, which the training script's docstring says how to rebuild
    into a folder of its own): never weights no recorded command makes."""
    meta = card(name)
    parent = card(meta["vision_from"])
    rebuildable = {parent["sha256"]["model.safetensors"], parent.get("continued_from", {}).get("sha256")}
    assert meta["vision_from_sha256"] in rebuildable, (name, meta["vision_from"])


def test_clip_shapes_names_held_out_shapes_without_torch(clip_shapes_bundle, tmp_path):
    data = write("classify", tmp_path / "scenes", 60)
    result = _run_without_torch(f"""
        from pathlib import Path
        from edgevfm.runtime import load
        from edgevfm.runtime.image import list_images
        shapes = ["circle", "square", "triangle", "star", "ring", "cross"]
        p = load({str(clip_shapes_bundle)!r}, threads=1)
        right = total = 0
        for folder in sorted(Path({str(data)!r}).iterdir()):
            if folder.name in shapes:
                for image in list_images(folder):
                    best = p.classify(image, [f"a photo of a {{s}}." for s in shapes])[0][0]
                    right += best == f"a photo of a {{folder.name}}."
                    total += 1
        print(right, total)
    """)
    assert result.returncode == 0, result.stderr
    right, total = map(int, result.stdout.split())
    # the shipped weights name 59 of these 60 and 0.967 of the report's 300 scenes (the target is 0.90); the
    # first run's alone named 0.69 there. The floor is the target: five answers below what they reach here
    assert total == 60 and right / total >= 0.9, right


def test_sam_shapes_segments_held_out_shapes_without_torch(sam_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.families.sam import centre_point, tight_box

    data = write("masks", tmp_path / "scenes", 12)
    content = json.loads((data / "instances.json").read_text())
    prompts = [(str(data / content["images"][a["image_id"]]["file_name"]), a["segmentation"],
                centre_point(_mask(a)), tight_box(_mask(a))) for a in content["annotations"]]
    result = _run_without_torch(f"""
        import numpy as np
        from edgevfm.runtime import load
        from edgevfm.runtime.masks import rle_to_mask
        p = load({str(sam_shapes_bundle)!r}, threads=1)
        ious = {{"point": [], "box": []}}
        for image, rle, point, box in {prompts!r}:
            truth = rle_to_mask(rle)
            p.set_image(image)
            for kind, r in (("point", p.predict(points=[point], labels=[1])), ("box", p.predict(box=box))):
                mask = r.masks[int(np.argmax(r.scores))]
                ious[kind].append((mask & truth).sum() / (mask | truth).sum())
        print(np.mean(ious["point"]), np.mean(ious["box"]), len(ious["box"]))
    """)
    assert result.returncode == 0, result.stderr
    point, box, count = result.stdout.split()
    assert int(count) == len(prompts) >= 12
    # the shipped weights reach 0.936 and 0.936 on this sample, 0.929 and 0.937 on the report's 60 scenes
    # (targets 0.85 and 0.90); the weights whose image encoder never learnt 0.815 and 0.877 here
    assert float(point) >= 0.90 and float(box) >= 0.90, (point, box)


def test_sam_bench_measures_automatic_mask_recall_against_the_scenes(sam_shapes_bundle, tmp_path):
    """With ground truth, each bundle row gets automatic-mask recall at IoU 0.5: the share of drawn
    shapes one generated mask covers, counted here again from the runtime's generator. edgevfm demo's
    quick bench counts it on the first QUICK_RECALL_IMAGES images (make report on RECALL_IMAGES), and
    its report says so."""
    from edgevfm.benchmarks.api import bench
    from edgevfm.benchmarks.families.sam import QUICK_RECALL_IMAGES, RECALL_FILTERS, RECALL_IMAGES, SamBench
    from edgevfm.runtime import load
    from edgevfm.runtime.image import load_image

    data = write("masks", tmp_path / "scenes", QUICK_RECALL_IMAGES + 1)
    full = SamBench(str(data))
    assert full.recall_images == RECALL_IMAGES > QUICK_RECALL_IMAGES + 1
    assert full.workload()["automatic_mask_recall"] == f"bundles, on the first {QUICK_RECALL_IMAGES + 1} of those images"
    found = bench([sam_shapes_bundle], reference="trained:sam-shapes", data=data, out_dir=tmp_path / "r", runs=1,
                  warmup=0, batch=1, threads=1, show_progress=False, quick=True)
    extra = found["rows"][1]["extra"]
    assert found["settings"]["quick"] is True
    assert "edgevfm demo's quick look: the family's workload is shortened" in (tmp_path / "r" / "report.md").read_text()
    assert found["workload"]["automatic_mask_recall"] == (f"bundles, on the first {QUICK_RECALL_IMAGES} of those images "
                                                          f"(edgevfm demo's quick look; make report takes {RECALL_IMAGES})")
    p = load(sam_shapes_bundle, threads=1)
    content = json.loads((data / "instances.json").read_text())
    hits = []
    for image in content["images"][:QUICK_RECALL_IMAGES]:
        masks = [f["segmentation"] for f in p.generate(load_image(data / image["file_name"]), **RECALL_FILTERS)]
        for a in content["annotations"]:
            if a["image_id"] == image["id"]:
                truth = _mask(a)
                hits.append(any((m & truth).sum() / (m | truth).sum() >= 0.5 for m in masks))
    assert extra["automatic_masks_recall@0.5"] == pytest.approx(np.mean(hits)) and 0 < np.mean(hits)
    assert f"{QUICK_RECALL_IMAGES} images" in extra["automatic_recall_settings"] and extra["automatic_masks_per_image"] > 0


def test_blip_shapes_captions_held_out_scenes_without_torch(blip_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.captions import cider_d, read_annotations

    _, items = read_annotations(write("captions", tmp_path / "scenes", 20))
    said = json.loads(_without_torch(blip_shapes_bundle, "[p.caption(image) for image in IMAGES]",
                                     [a.image for a in items]))
    exact = np.mean([s == a.truths[0] for s, a in zip(said, items)])
    score = cider_d(said, [a.truths for a in items])
    assert len(said) == 20 and score >= CAPTION_CIDER and exact >= CAPTION_EXACT, (score, exact, said[:3])


def test_blip_vqa_shapes_answers_held_out_questions_without_torch(blip_vqa_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.captions import read_annotations, vqa_accuracy

    _, items = read_annotations(write("vqa", tmp_path / "scenes", 8))
    said = json.loads(_without_torch(blip_vqa_shapes_bundle, "[p.answer(image, q) for image, q in zip(IMAGES, QUESTIONS)]",
                                     [a.image for a in items], [a.question for a in items]))
    accuracy = np.mean([vqa_accuracy(s, a.truths) for s, a in zip(said, items)])
    assert len(said) == len(items) >= 40 and accuracy >= VQA_ACCURACY, (accuracy, said[:5])


def test_blip_itm_shapes_matches_held_out_captions_without_torch(blip_itm_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.captions import read_annotations
    from edgevfm.benchmarks.families.blip_retrieval import negatives

    _, items = read_annotations(write("captions", tmp_path / "scenes", 20))
    texts = [a.truths[0] for a in items]
    pairs = [(a.image, t, 1) for a, t in zip(items, texts)] + [(a.image, texts[j], 0) for a, j in zip(items, negatives(texts))]
    found = json.loads(_without_torch(blip_itm_shapes_bundle, "[p.match(image, t)['itm'] for image, t in zip(IMAGES, QUESTIONS)]",
                                      [i for i, _, _ in pairs], [t for _, t, _ in pairs]))
    accuracy = np.mean([(f > 0.5) == bool(label) for f, (_, _, label) in zip(found, pairs)])
    assert len(found) == 40 and accuracy >= ITM_ACCURACY, accuracy


def test_blip2_shapes_answers_and_captions_held_out_scenes_without_torch(blip2_shapes_bundle, tmp_path):
    """The shipped part is the Q-Former and projection; the language model is SmolLM2, frozen."""
    from edgevfm.benchmarks.captions import cider_d, read_annotations, vqa_accuracy

    _, items = read_annotations(write("vqa", tmp_path / "vqa", 8))
    _, scenes = read_annotations(write("captions", tmp_path / "captions", 10))
    said = json.loads(_without_torch(blip2_shapes_bundle, "[[p.answer(image, q) for image, q in zip(IMAGES, QUESTIONS)],"
                                     " [p.caption(image) for image in IMAGES[-10:]]]",
                                     [a.image for a in items + scenes], [a.question for a in items]))
    answers, captions = said
    accuracy = np.mean([vqa_accuracy(s, a.truths) for s, a in zip(answers, items)])
    score = cider_d(captions, [a.truths for a in scenes])
    assert len(answers) == len(items) >= 40 and accuracy >= BLIP2_VQA_ACCURACY, (accuracy, answers[:5])
    assert len(captions) == 10 and score >= BLIP2_CIDER, (score, captions[:3])


def test_llava_shapes_answers_held_out_questions_without_torch(llava_shapes_bundle, tmp_path):
    """The shipped parts are the tower and projector; the language model is SmolLM2, frozen."""
    from edgevfm.benchmarks.captions import read_annotations, vqa_accuracy

    _, items = read_annotations(write("vqa", tmp_path / "vqa", 8))
    said = json.loads(_without_torch(llava_shapes_bundle, "[p.answer(image, q, max_new_tokens=8) for image, q in "
                                     "zip(IMAGES, QUESTIONS)]", [a.image for a in items], [a.question for a in items]))
    accuracy = np.mean([vqa_accuracy(s, a.truths) for s, a in zip(said, items)])
    assert len(said) == len(items) >= 40 and accuracy >= LLAVA_VQA_ACCURACY, (accuracy, said[:5])


def _without_torch(bundle, expression: str, images: list, questions: list | None = None) -> str:
    """``expression`` (over ``p``, ``IMAGES``, ``QUESTIONS``) evaluated with the bundle loaded by the
    runtime in a process where torch cannot be imported, as JSON."""
    result = _run_without_torch(f"""
        import json
        from edgevfm.runtime import load
        p = load({str(bundle)!r}, threads=1)
        IMAGES, QUESTIONS = {[str(i) for i in images]!r}, {questions!r}
        print(json.dumps({expression}))
    """)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _mask(annotation) -> np.ndarray:
    from edgevfm.runtime.masks import rle_to_mask

    return rle_to_mask(annotation["segmentation"])


def test_the_demo_says_what_each_blip_preset_gets_right_on_held_out_scenes(blip_shapes_bundle, blip_vqa_shapes_bundle,
                                                                          blip_itm_shapes_bundle, tmp_path, capsys):
    from edgevfm.benchmarks.families.blip import BlipBench
    from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scenes
    from edgevfm.runtime import load

    BlipBench.demo([blip_shapes_bundle], tmp_path, 1)
    BlipBench.demo([blip_vqa_shapes_bundle], tmp_path, 1)
    BlipBench.demo([blip_itm_shapes_bundle], tmp_path, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("right)")]
    shown = scenes(HELD_OUT_SEED, 3)
    captioner, answerer = load(blip_shapes_bundle, threads=1), load(blip_vqa_shapes_bundle, threads=1)
    captions = [captioner.caption(s.image) for s in shown]
    assert len(lines) == 3 and all(repr(c) in lines[0] for c in captions)
    assert lines[0].endswith(f"({sum(c in s.captions for c, s in zip(captions, shown))}/3 right)")
    answers = [(answerer.answer(s.image, q), a) for s in shown for q, a, _ in s.questions[:3]]
    assert lines[1].endswith(f"({sum(said == a for said, a in answers)}/{len(answers)} right)")
    assert lines[2].endswith("/6 right)") and "for its caption" in lines[2]


def test_the_demo_says_what_blip2_shapes_captions_and_answers(blip2_shapes_bundle, tmp_path, capsys):
    """A BLIP-2 bundle has no task of its own: the demo shows its captions and its answers."""
    from edgevfm.benchmarks.families.blip2 import Blip2Bench
    from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scenes
    from edgevfm.runtime import load

    Blip2Bench.demo([blip2_shapes_bundle], tmp_path, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("right)")]
    shown, p = scenes(HELD_OUT_SEED, 3), load(blip2_shapes_bundle, threads=1)
    captions = [p.caption(s.image) for s in shown]
    answers = [(p.answer(s.image, q), a) for s in shown for q, a, _ in s.questions[:3]]
    assert len(lines) == 2 and all(repr(c) in lines[0] for c in captions)
    assert lines[0].endswith(f"({sum(c in s.captions for c, s in zip(captions, shown))}/3 right)")
    assert lines[1].endswith(f"({sum(said == a for said, a in answers)}/{len(answers)} right)")


def test_blip2_shapes_bench_scores_vqa_as_pytorch(blip2_shapes_bundle, tmp_path):
    """The scenes' questions differ in length: the bench's teacher-forced logits run along the
    answer only, and the FP32 bundle answers and scores as PyTorch does."""
    from edgevfm.benchmarks.api import bench

    data = write("vqa", tmp_path / "scenes", 2)
    found = bench([blip2_shapes_bundle], reference="trained:blip2-shapes", data=data, out_dir=tmp_path / "r",
                  runs=1, warmup=0, batch=1, threads=1, show_progress=False)
    torch_row, fp32 = (row["accuracy"] for row in found["rows"])
    assert fp32["vqa_accuracy"] == pytest.approx(torch_row["vqa_accuracy"]) and fp32["vqa_accuracy"] > 0.5
    assert fp32["next_token_top1_agreement"] == 1.0 and fp32["kl_divergence_mean"] < 1e-4


def test_vqa_accuracy_per_question_kind_in_the_bench(blip_vqa_shapes_bundle, tmp_path):
    """The scenes' VQA files name each question's kind: the bench scores each kind in its own
    column, and the FP32 bundle scores what PyTorch scores."""
    from edgevfm.benchmarks.api import bench
    from edgevfm.benchmarks.captions import read_annotations

    data = write("vqa", tmp_path / "scenes", 3)
    _, items = read_annotations(data)
    kinds = sorted({a.kind for a in items})
    assert set(kinds) <= {"count", "colour", "shape", "yes/no", "position"} and "shape" in kinds
    found = bench([blip_vqa_shapes_bundle], reference="trained:blip-vqa-shapes", data=data, out_dir=tmp_path / "r",
                  runs=1, warmup=0, batch=1, threads=1, show_progress=False)
    torch_row, fp32 = found["rows"]
    for kind in kinds:
        key = f"vqa_accuracy ({kind})"
        assert 0 <= torch_row["accuracy"][key] <= 1 and fp32["accuracy"][key] == pytest.approx(torch_row["accuracy"][key])
    weighted = sum(torch_row["accuracy"][f"vqa_accuracy ({k})"] * sum(a.kind == k for a in items) for k in kinds)
    assert torch_row["accuracy"]["vqa_accuracy"] == pytest.approx(weighted / len(items))


def test_the_demo_says_what_llava_shapes_answers(llava_shapes_bundle, tmp_path, capsys):
    from edgevfm.benchmarks.families.llava import ANSWER_TOKENS, LlavaBench
    from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scenes
    from edgevfm.runtime import load

    LlavaBench.demo([llava_shapes_bundle], tmp_path, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("right)")]
    shown, p = scenes(HELD_OUT_SEED, 3), load(llava_shapes_bundle, threads=1)
    answers = [(q, p.answer(s.image, q, max_new_tokens=ANSWER_TOKENS), a) for s in shown for q, a, _ in s.questions[:3]]
    assert len(lines) == 1 and f"{answers[0][0]} {answers[0][1]}" in lines[0]
    assert lines[0].endswith(f"({sum(said == a for _, said, a in answers)}/{len(answers)} right)")


def test_llava_shapes_bench_scores_vqa_as_pytorch(llava_shapes_bundle, tmp_path):
    """With VQA annotations the LLaVA bench answers each question: the FP32 bundle scores, per
    question kind too, what transformers' generate scores."""
    from edgevfm.benchmarks.api import bench

    data = write("vqa", tmp_path / "scenes", 2)
    # quick: the fixed image prompts on one photo, not three (SmolLM2 in PyTorch is most of the
    # time); the annotated questions are all answered (quick answers the first 32: these are fewer)
    found = bench([llava_shapes_bundle], reference="trained:llava-shapes", data=data, out_dir=tmp_path / "r",
                  runs=1, warmup=0, batch=1, threads=1, show_progress=False, quick=True)
    torch_row, fp32 = (row["accuracy"] for row in found["rows"])
    kinds = [k for k in torch_row if k.startswith("vqa_accuracy (")]
    assert kinds and fp32["vqa_accuracy"] > 0.5, fp32
    for key in ["vqa_accuracy", *kinds]:
        assert fp32[key] == pytest.approx(torch_row[key]), key
    assert fp32["vqa_accuracy drop"] == pytest.approx(0.0) and fp32["next_token_top1_agreement"] == 1.0
    # greedy sequences of a fixed length on both sides (a trained model would stop after a word)
    assert fp32["greedy_prefix_agreement"] == 1.0


def test_llava_bench_refuses_caption_annotations(tmp_path):
    from edgevfm.benchmarks.families.llava import LlavaBench
    from edgevfm.runtime.errors import InputError

    with pytest.raises(InputError, match="holds caption annotations, but LLaVA bundles are measured on questions"):
        LlavaBench(str(write("captions", tmp_path / "scenes", 2)))

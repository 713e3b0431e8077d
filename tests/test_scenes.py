"""The scene generator: the same bytes in every process; masks, captions and answers that agree with
how each scene was drawn; data sets that the benchmarks' readers read back; trained presets that
refuse bytes other than the recorded ones."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from edgevfm.benchmarks.scene_data import KINDS, write
from edgevfm.benchmarks.scenes import COLOURS, HELD_OUT_SEED, MIN_VISIBLE, SHAPES, relation, scenes, shape_mask
from edgevfm.runtime.cli import main

DIGEST = """
import hashlib, sys
from edgevfm.benchmarks.scenes import scenes
h = hashlib.sha256()
for s in scenes(int(sys.argv[1]), 6):
    h.update(s.image.tobytes()); h.update(s.masks.tobytes()); h.update(repr((s.captions, s.questions)).encode())
print(h.hexdigest())
"""


@pytest.fixture(scope="module")
def drawn():
    return scenes(HELD_OUT_SEED, 60)


def test_a_scene_is_the_same_bytes_in_every_process():
    digests = {subprocess.run([sys.executable, "-c", DIGEST, str(HELD_OUT_SEED)], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    here = hashlib.sha256()
    for s in scenes(HELD_OUT_SEED, 6):
        here.update(s.image.tobytes())
        here.update(s.masks.tobytes())
        here.update(repr((s.captions, s.questions)).encode())
    assert digests == {here.hexdigest()}
    other = subprocess.run([sys.executable, "-c", DIGEST, "1"], capture_output=True, text=True, check=True).stdout
    assert other.strip() != here.hexdigest()  # another seed is another split


def test_masks_are_the_visible_pixels_of_each_shape(drawn):
    for s in drawn:
        assert s.image.dtype == np.uint8 and s.image.shape == (128, 128, 3)
        assert s.masks.shape == (len(s.objects), 128, 128)
        assert s.masks.sum(0).max() <= 1  # one owner per pixel
        covered = np.zeros((128, 128), bool)
        for obj, mask in reversed(list(zip(s.objects, s.masks))):
            full = shape_mask(obj, 128)
            assert np.array_equal(mask, full & ~covered)
            assert mask.sum() >= MIN_VISIBLE * full.sum() > 0
            covered |= full


def test_each_mask_has_its_named_colour(drawn):
    """The mean colour under a mask, brightness divided out, is nearest its named colour's."""
    names = list(COLOURS)
    palette = np.float64([COLOURS[n] for n in names])
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    for s in drawn:
        for obj, mask in zip(s.objects, s.masks):
            mean = s.image[mask].astype(np.float64).mean(0)
            assert names[int(np.argmax(palette @ (mean / np.linalg.norm(mean))))] == obj.colour


def test_captions_and_answers_follow_the_drawing(drawn):
    for s in drawn:
        order = sorted(s.objects, key=lambda o: o.x)
        canonical = s.captions[0]
        positions = [canonical.index(f"{o.size} {o.colour} {o.shape}") for o in order]
        assert positions == sorted(positions), canonical  # named left to right
        if len(s.objects) == 2:
            assert f" {relation(order[0], order[1])} " in canonical
            centroids = [np.argwhere(m).mean(0) for m in s.masks]  # (y, x) of the visible pixels
            dy, dx = centroids[0] - centroids[1]
            if max(abs(dx), abs(dy)) > 2 * min(abs(dx), abs(dy)):
                said = relation(*s.objects)
                assert said == (("left of" if dx < 0 else "right of") if abs(dx) > abs(dy) else
                                ("above" if dy < 0 else "below"))
        answers = {q: a for q, a, _ in s.questions}
        assert answers["how many shapes are there?"] == ("zero", "one", "two", "three")[len(s.masks)]
        for obj in s.objects:
            if [o.shape for o in s.objects].count(obj.shape) == 1:
                assert answers[f"what colour is the {obj.shape}?"] == obj.colour
            assert answers.get(f"is there a {obj.name}?", "yes") == "yes"
        for q, a in answers.items():
            if q.startswith("is there a "):
                colour, shape = q[len("is there a "):-1].split()
                assert a == ("yes" if any(o.name == f"{colour} {shape}" for o in s.objects) else "no")
        assert s.label == max(s.objects, key=lambda o: o.radius).shape in SHAPES


def test_every_kind_of_data_set_reads_back_through_the_benchmarks(tmp_path):
    from edgevfm.benchmarks.captions import read_annotations
    from edgevfm.benchmarks.families.clip import labelled_folder, retrieval_set
    from edgevfm.benchmarks.families.sam import ground_truth
    from edgevfm.runtime.image import load_image

    folders = {kind: write(kind, tmp_path / kind, 4) for kind in KINDS}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    classes, paths, truth = labelled_folder(str(folders["classify"]))
    assert set(classes) <= set(SHAPES) and len(paths) == 4 and "retrieval" not in classes
    for path, index in zip(paths, truth):
        assert path.parent.name == classes[index]
    images, texts = retrieval_set(str(folders["classify"]))
    assert len(images) == 4 and texts[0] == scenes(HELD_OUT_SEED, 1, start=10 ** 6)[0].captions[0]
    kind, items = read_annotations(folders["captions"])
    drawn = scenes(HELD_OUT_SEED, 4)
    assert kind == "caption" and [i.truths for i in items] == [s.captions for s in drawn]
    assert np.array_equal(np.asarray(load_image(items[0].image)), drawn[0].image)  # PNG: lossless
    kind, items = read_annotations(folders["vqa"])
    assert kind == "vqa" and [(i.question, i.truths) for i in items] == [
        (q, [a] * 3) for s in drawn for q, a, _ in s.questions]
    masks = ground_truth(str(folders["masks"]))
    assert [len(m) for _, m in masks] == [len(s.masks) for s in drawn]
    for (_, found), s in zip(masks, drawn):
        assert all(np.array_equal(a, b) for a, b in zip(found, s.masks))
    assert json.loads((folders["masks"] / "scenes.json").read_text()) == {"kind": "masks", "seed": HELD_OUT_SEED,
                                                                          "count": 4}


def test_the_scenes_command_writes_a_data_set(tmp_path, capsys):
    assert main(["scenes", str(tmp_path / "vqa"), "--kind", "vqa", "--count", "2", "--seed", "7"]) == 0
    assert f"wrote {tmp_path / 'vqa'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "vqa" / "scenes.json").read_text()) == {"kind": "vqa", "seed": 7, "count": 2}
    with pytest.raises(SystemExit):
        main(["scenes", str(tmp_path / "x"), "--kind", "faces"])
    assert "invalid choice: 'faces'" in capsys.readouterr().err


def test_a_trained_preset_refuses_other_bytes(tmp_path, monkeypatch):
    from edgevfm.export import presets
    from edgevfm.export.errors import CheckpointError

    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    card = {"command": "python training/toy.py", "sha256": {"model.safetensors": digest, "config.json": digest}}
    (folder / "preset.json").write_text(json.dumps(card))
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"config.json \(expected sha256 .*, found missing\).*"
                                              r"rebuild them with: python training/toy.py"):
        presets.verify("toy")
    (folder / "config.json").write_bytes(b"weights")
    assert presets.verify("toy") == folder
    (folder / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1")  # an LFS pointer
    with pytest.raises(CheckpointError, match=r"trained:toy does not match its preset.json: model.safetensors"):
        presets.verify("toy")
    with pytest.raises(CheckpointError, match=r"trained:absent has no readable .*preset.json"):
        presets.verify("absent")


def test_a_fresh_process_knows_the_scene_trained_presets():
    """find_preset registers the families itself: a bench started from the command line asks before
    anything else has imported them."""
    code = ("from edgevfm.benchmarks.scene_data import scene_trained\n"
            "print(scene_trained('trained:clip-shapes'), scene_trained('random:clip-tiny'), scene_trained('./x'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


def test_scene_trained_presets_calibrate_on_the_training_split(tmp_path):
    """What the demo and the TensorRT tool pass as --calib for a trained preset: scenes of the
    training split (never the held-out one the benchmarks score), with the texts the task reads."""
    import json

    from edgevfm.benchmarks.scene_data import CALIBRATION_COUNT, calibration_set, calibration_source
    from edgevfm.benchmarks.scenes import HELD_OUT_SEED, TRAIN_SEED

    assert TRAIN_SEED != HELD_OUT_SEED
    for family, task, kind in (("blip", "vqa", "vqa"), ("blip", "retrieval", "captions"), ("clip", None, "captions"),
                               ("sam", None, "captions")):
        folder = calibration_set(family, tmp_path, task)
        assert json.loads((folder / "scenes.json").read_text()) == {"kind": kind, "seed": TRAIN_SEED,
                                                                   "count": CALIBRATION_COUNT}
        assert calibration_source({"source": str(folder), "texts": "x"}) == (
            f"training-split scenes, `edgevfm scenes DIR --kind {kind} --count {CALIBRATION_COUNT} --seed {TRAIN_SEED}`; "
            "texts: x")
    assert len(list(tmp_path.iterdir())) == 2  # written once per kind, then reused


def test_reports_say_what_a_row_calibrated_on(tmp_path):
    from edgevfm.benchmarks.report import calibration_text
    from edgevfm.benchmarks.scene_data import calibration_set, calibration_source

    folder = calibration_set("blip", tmp_path, "retrieval")
    scenes = calibration_source({"source": str(folder), "texts": "the data set's captions", "samples": {"itm": 8}})
    assert scenes == "training-split scenes, `edgevfm scenes DIR --kind captions --count 32 --seed 1`; texts: the data set's captions"
    photos = calibration_source({"source": "scikit-image photos", "texts": "the family's own"})
    assert photos == "scikit-image's photos; texts: the family's own"
    assert calibration_source(None) is None
    rows = [{"calibration": None}, {"calibration": scenes}, {"calibration": scenes}, {}]
    assert calibration_text({"rows": rows}) == f" Calibrated recipes calibrated on {scenes}."
    assert calibration_text({"rows": rows[:1]}) == ""

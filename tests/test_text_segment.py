"""Text-prompted segmentation (SAM's masks ranked by CLIP) on the scene-trained presets, whose
CLIP names colours reliably: on a held-out scene of two shapes of different colours, the text
naming one gives that shape's mask first, through the API, the command line and a process where
torch cannot be imported; bad input is a typed error that says what was expected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scenes
from edgevfm.runtime import InputError, load
from edgevfm.runtime.cli import main
from edgevfm.runtime.families.sam_text import mask_iou, masked_crop
from edgevfm.runtime.masks import mask_boxes

from test_torch_free import _run_without_torch

# what the top mask must reach against the named shape: a mask of the right shape (the trained SAM's
# best proposals reach 0.92 mean IoU in the benchmark: benchmarks/reports/applications/text-segment)
NAMED_IOU = 0.5
# the share of queries whose top mask is the named shape's: the benchmark's 56 queries, 0.875 (IoU > 0.5);
# the 20 below reach 18 with the shipped weights (20 with the boxes given; sam-shapes before its image
# encoder learnt, 19 and 20), held to 16: two answers of margin for another CPU's float sums
NAMED_RATE = 0.8


def _two_colour_scenes(count: int = 10):
    """The first held-out scenes of exactly two shapes of different colours; the first has two
    large ones (a cyan triangle and a red square), which the test of each way in uses."""
    found = [s for s in scenes(HELD_OUT_SEED, 80) if len(s.objects) == 2 and s.objects[0].colour != s.objects[1].colour]
    return found[:count]


@pytest.fixture(scope="module")
def pair(sam_shapes_bundle, clip_shapes_bundle):
    return load(sam_shapes_bundle, threads=1), load(clip_shapes_bundle, threads=1)


def _named(mask: np.ndarray, scene, k: int) -> bool:
    """The mask is the k-th shape's: IoU above NAMED_IOU, and it overlaps it more than the other."""
    other = scene.masks[1 - k]
    return mask_iou(mask, scene.masks[k]) > NAMED_IOU and np.count_nonzero(mask & scene.masks[k]) > np.count_nonzero(
        mask & other)


def _check_named(mask: np.ndarray, scene, k: int) -> None:
    assert _named(mask, scene, k), (scene.objects[k].name, mask_iou(mask, scene.masks[k]))


def test_the_text_naming_a_shape_gives_its_mask_first(pair):
    sam, clip = pair
    named = []
    for scene in _two_colour_scenes():
        for k, obj in enumerate(scene.objects):
            found = sam.segment_text(scene.image, f"a {obj.size} {obj.name}", clip, top=2)
            named.append(_named(found[0].mask, scene, k))
            # one mask per object, best first, with both scores
            assert [f.clip_score for f in found] == sorted((f.clip_score for f in found), reverse=True)
            assert len(found) < 2 or mask_iou(found[0].mask, found[1].mask) <= 0.5
            assert all(f.predicted_iou > 0.5 and 0 <= f.probability <= 1 for f in found)  # automatic: IoU > 0.5
            assert found[0].box == [float(v) for v in mask_boxes(found[0].mask[None])[0]]
    assert len(named) == 20 and np.mean(named) >= NAMED_RATE, named


def test_boxes_given_are_the_proposals(pair):
    """With every shape's box given, the proposals are SAM's masks for those boxes, ranked by CLIP's
    score; the named shape comes first for at least the share of queries the automatic proposals
    reach (all 20 with the shipped weights)."""
    sam, clip = pair
    named = []
    for scene in _two_colour_scenes():
        boxes = mask_boxes(scene.masks)
        for k, obj in enumerate(scene.objects):
            found = sam.segment_text(scene.image, f"a {obj.name}", clip, top=5, boxes=boxes)
            assert 1 <= len(found) <= 2
            assert [f.clip_score for f in found] == sorted((f.clip_score for f in found), reverse=True)
            assert all(max(mask_iou(f.mask, m) for m in scene.masks) > NAMED_IOU for f in found)
            named.append(_named(found[0].mask, scene, k))
    assert np.mean(named) >= NAMED_RATE, named


def test_the_command_line_writes_the_ranked_masks(sam_shapes_bundle, clip_shapes_bundle, pair, tmp_path, capsys):
    scene = _two_colour_scenes()[0]
    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    obj = scene.objects[1]
    out = tmp_path / "out" / "mask.png"
    code = main(["run", str(sam_shapes_bundle), "--threads", "1", "segment", str(image), "--text", f"a {obj.name}",
                 "--clip", str(clip_shapes_bundle), "--top", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    written = np.asarray(Image.open(out)) > 0
    _check_named(written, scene, 1)
    expected = pair[0].segment_text(scene.image, f"a {obj.name}", pair[1], top=2)
    assert np.array_equal(written, expected[0].mask)
    assert f"CLIP score {expected[0].clip_score:.4f}" in printed
    assert (out.parent / "mask.overlay.png").is_file()
    assert (out.parent / "mask.2.png").is_file() == (len(expected) == 2)


def test_text_segmentation_runs_without_torch(sam_shapes_bundle, clip_shapes_bundle):
    scene = _two_colour_scenes()[0]
    result = _run_without_torch(f"""
        import json
        import numpy as np
        from edgevfm.benchmarks.scenes import scenes
        from edgevfm.runtime import load
        scene = scenes({HELD_OUT_SEED}, 80)[{_index(scene)}]
        sam, clip = load({str(sam_shapes_bundle)!r}, threads=1), load({str(clip_shapes_bundle)!r}, threads=1)
        top = sam.segment_text(scene.image, "a {scene.objects[0].name}", clip, top=1)[0]
        print(json.dumps(np.flatnonzero(top.mask).tolist()))
    """)
    assert result.returncode == 0, result.stderr
    mask = np.zeros(scene.image.shape[:2], bool)
    mask.flat[json.loads(result.stdout)] = True
    _check_named(mask, scene, 0)


def _index(scene) -> int:
    return next(i for i, s in enumerate(scenes(HELD_OUT_SEED, 80)) if np.array_equal(s.image, scene.image))


def test_a_masked_crop_is_square_centred_and_greyed_outside_the_mask():
    pixels = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[30:40, 50:60] = True  # a corner: the crop reaches past the image
    crop = masked_crop(pixels, mask, "grey", fill=(1, 2, 3), margin=0.5)
    assert crop.shape == (20, 20, 3)
    assert (crop[5:15, 5:15] == 200).all()  # the mask, in the middle
    assert (crop[:5] == (1, 2, 3)).all() and (crop[:, 15:] == (1, 2, 3)).all()
    plain = masked_crop(pixels, mask, "none", fill=(1, 2, 3), margin=0.5)
    assert (plain[:5, :15] == 200).all() and (plain[:, 15:] == (1, 2, 3)).all()  # inside the image: as is


@pytest.mark.parametrize("call, message", [
    (dict(text="  "), "the text must name what to segment"),
    (dict(text="a red circle", top=0), "top must be an integer >= 1"),
    (dict(text="a red circle", background="black"), "background must be one of grey, blur, none"),
    (dict(text="a red circle", boxes=[[1, 2, 3]]), r"boxes must be \(P, 4\) XYXY"),
    (dict(text="a red circle", boxes="everywhere"), "boxes must be"),
    (dict(text="a red circle", boxes=[[0, 0, 20, 20]], points_per_side=4), "apply only to automatic proposals"),
], ids=["empty-text", "top-0", "background", "short-box", "text-boxes", "options-with-boxes"])
def test_bad_text_prompt_is_an_input_error(pair, call, message):
    sam, clip = pair
    with pytest.raises(InputError, match=message):
        sam.segment_text(_two_colour_scenes()[0].image, clip=clip, **call)


def test_a_non_clip_scorer_is_an_input_error(pair):
    sam, _ = pair
    with pytest.raises(InputError, match="clip= must be a CLIP pipeline .* found 'sam'"):
        sam.segment_text(_two_colour_scenes()[0].image, "a red circle", sam)


@pytest.mark.parametrize("extra, message", [
    (["--text", "a red circle"], "needs both --text 'WHAT' and --clip CLIP_BUNDLE"),
    (["--clip", "CLIP"], "needs both --text 'WHAT' and --clip CLIP_BUNDLE"),
    (["--text", "a red circle", "--clip", "CLIP", "--point", "3,3"], "--text takes no points"),
    (["--text", "a red circle", "--clip", "SAM"], "--clip .* is a sam bundle: give a CLIP bundle"),
    (["--box", "0,0,5,5", "--box", "1,1,6,6"], "one --box per mask"),
    (["--text", "a red circle", "--clip", "CLIP", "--pred-iou-thresh", "2"], "no mask proposal passed SAM's filters"),
], ids=["no-clip", "no-text", "points", "clip-is-sam", "two-boxes", "nothing-proposed"])
def test_bad_text_prompt_on_the_command_line_exits_3_and_writes_nothing(
        extra, message, sam_shapes_bundle, clip_shapes_bundle, tmp_path, capsys):
    image = tmp_path / "scene.png"
    Image.fromarray(_two_colour_scenes()[0].image).save(image)
    names = {"CLIP": str(clip_shapes_bundle), "SAM": str(sam_shapes_bundle)}
    code = main(["run", str(sam_shapes_bundle), "segment", str(image), "--out", str(tmp_path / "m.png"),
                 *[names.get(a, a) for a in extra]])
    assert code == 3
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("best, limit", [(0.7, "The ceiling is SAM's"), (0.85, "CLIP's choice is the limit")])
def test_the_report_says_which_model_limits_a_missed_target(best, limit):
    """The report's conclusion follows its figures: SAM's proposals are the ceiling only when the
    best of them cannot reach the target."""
    from edgevfm.benchmarks.text_segment import report

    row = {"sam": "fp32", "clip": "fp32", "background": "grey", "proposals": "automatic", "miou": 0.6, "hit_rate": 0.7,
           "right_object": 0.75, "best_proposal": best, "agreement": 1.0, "median_ms": 700, "queries": 56}
    machine = {"cpu": "x", "isa": "AVX2", "instruction_sets": ["avx2"], "threads": 2, "libraries": {}}
    results = {"machine": machine, "rows": [dict(row, background=b) for b in ("grey", "blur", "none")] + [row],
               "sam_model": "s", "clip_model": "c", "created": "now", "scenes": 40, "phrase": "a {size} {name}"}
    text = report(results, "python -m edgevfm.benchmarks.text_segment", target=0.8)
    assert f"missed by 0.200 (0.600). {limit}" in text
    assert f"{best:.3f} on average" in text

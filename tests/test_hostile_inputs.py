"""Hostile: images, prompts and command lines. Each bad input is a typed error said before any
work runs, a good one gives a correct answer, and fuzzers over each family's image loading and
prompt parsing find nothing else."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from edgevfm.runtime import InputError, load
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import EXIT_CODES, StateError
from edgevfm.runtime.families.sam import numbers_arg
from edgevfm.runtime.image import MAX_RESIZED_PIXELS, load_image, preprocess

from helpers import fuzz_settings

FAMILIES = ["blip", "blip2", "blip2-itm", "clip", "llava", "sam"]
TRAINED = ["clip-shapes", "sam-shapes", "blip-shapes", "blip-vqa-shapes", "blip-itm-shapes",  # trained on scenes
           "blip2-shapes", "llava-shapes"]

@pytest.fixture(scope="module")
def clip(clip_bundle):
    return load(clip_bundle, threads=1)


@pytest.fixture(scope="module")
def sam(sam_bundle):
    return load(sam_bundle, threads=1)


@pytest.fixture(scope="module")
def llava(llava_bundle):
    return load(llava_bundle, threads=1)


@pytest.fixture(scope="module")
def blip(blip_bundle):
    return load(blip_bundle, threads=1)


@pytest.fixture(scope="module")
def blip2(blip2_bundle):
    return load(blip2_bundle, threads=1)


@pytest.fixture(scope="module")
def blip2_itm(blip2_itm_bundle):
    return load(blip2_itm_bundle, threads=1)


@pytest.fixture(scope="module")
def trained(clip_shapes_bundle, sam_shapes_bundle, blip_shapes_bundle, blip_vqa_shapes_bundle, blip_itm_shapes_bundle,
            blip2_shapes_bundle, llava_shapes_bundle):
    bundles = {"clip-shapes": clip_shapes_bundle, "sam-shapes": sam_shapes_bundle, "blip-shapes": blip_shapes_bundle,
               "blip-vqa-shapes": blip_vqa_shapes_bundle, "blip-itm-shapes": blip_itm_shapes_bundle,
               "blip2-shapes": blip2_shapes_bundle, "llava-shapes": llava_shapes_bundle}
    return {name: load(bundle, threads=1) for name, bundle in bundles.items()}


@pytest.fixture
def pipelines(blip, blip2, blip2_itm, clip, llava, sam, trained):
    return {"blip": blip, "blip2": blip2, "blip2-itm": blip2_itm, "clip": clip, "llava": llava, "sam": sam, **trained}


def _take(pipeline, image):
    """Give ``image`` to a pipeline the way its users do."""
    if pipeline.family == "clip":
        return pipeline.embed_images(image)
    if pipeline.family in ("llava", "blip2"):
        return pipeline.image_features([image])
    if pipeline.family == "blip":
        return pipeline.image_embeds([image])
    return pipeline.set_image(image)


@pytest.fixture(params=FAMILIES + TRAINED)
def pipeline(request, pipelines):
    return pipelines[request.param]


def _rotated_photo(tmp_path, photo) -> tuple:
    """A PNG whose pixels are stored sideways with EXIF orientation 6 (rotate 90° clockwise to
    show), as phones write them; and the upright pixels it shows."""
    upright = Image.fromarray(photo)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    return path, np.asarray(upright)


# -- images ---------------------------------------------------------------------------------------
def test_exif_orientation_is_applied_like_transformers(tmp_path, photos):
    from transformers.image_utils import load_image as hf_load_image

    path, upright = _rotated_photo(tmp_path, photos[1])
    ours = np.asarray(load_image(path))
    np.testing.assert_array_equal(ours, np.asarray(hf_load_image(str(path))))
    np.testing.assert_array_equal(ours, upright)
    np.testing.assert_array_equal(np.asarray(load_image(Image.open(path))), upright)  # a PIL image as well


def test_exif_photo_embeds_upright(clip, tmp_path, photos):
    path, upright = _rotated_photo(tmp_path, photos[1])
    np.testing.assert_allclose(clip.embed_images(path), clip.embed_images(upright), atol=1e-6)


@pytest.mark.parametrize("image", [Image.new("RGB", (0, 0)), Image.new("RGB", (5, 0)),
                                   np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0), np.uint8)],
                         ids=["pil-0x0", "pil-5x0", "array-0x0", "array-4x0"])
def test_empty_image(pipeline, image):
    with pytest.raises(InputError, match="empty"):
        _take(pipeline, image)


@pytest.mark.parametrize("side", [10_000, 13_000], ids=["over-the-limit", "over-twice-the-limit"])
def test_decompression_bomb(tmp_path, side):
    path = tmp_path / "bomb.png"
    Image.new("1", (side, 9_500)).save(path)  # a few kB on disk, ~100 M pixels decoded
    assert path.stat().st_size < 200_000
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(path)


def test_extreme_aspect_ratio_is_refused_before_resizing(pipeline):
    """Resizing by an edge would blow a 1 x 50,000 image up past the limit: refused. A fixed
    height x width resize (BLIP's) cannot blow up: it makes the model's input."""
    thin = np.zeros((1, 50_000, 3), np.uint8)
    if "height" in pipeline.manifest["preprocessing"]["resize"]:
        assert np.isfinite(_take(pipeline, thin)).all()
        return
    with pytest.raises(InputError, match=f"at most {MAX_RESIZED_PIXELS} pixels.*aspect ratio is too extreme"):
        _take(pipeline, thin)


def test_retrieve_skips_bad_files_and_says_so(clip_bundle, photos, tmp_path, capsys):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(photos[i]).save(folder / f"{i}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.new("1", (13_000, 9_500)).save(folder / "bomb.png")
    assert main(["run", str(clip_bundle), "retrieve", "--query", "a cat", "--images", str(folder), "-k", "5"]) == 0
    captured = capsys.readouterr()
    assert sorted(line.split()[1].rsplit("/", 1)[1] for line in captured.out.splitlines()) == ["0.png", "1.png"]
    assert "skipped" in captured.err and "corrupt.jpg" in captured.err and "bomb.png" in captured.err


# -- prompts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, message", [
    (dict(points=[[np.nan, 5]], labels=[1]), "points holds NaN or infinity"),
    (dict(box=[0, 0, np.inf, 10]), "box holds NaN or infinity"),
    (dict(points=np.zeros((0, 2)), labels=[]), "points is empty"),
    (dict(points=[[10, 10]], labels=["yes"]), "labels must be numbers"),
    (dict(points=[[10, 10]], labels=[1], mask_input=np.full((32, 32), np.nan)), "mask_input holds NaN"),
    (dict(box=[1, 2, 3]), "box must hold 4 numbers"),
], ids=["nan-point", "inf-box", "no-points", "text-label", "nan-mask", "short-box"])
def test_bad_sam_prompt(sam, photos, prompt, message):
    sam.set_image(photos[1])
    with pytest.raises(InputError, match=message):
        sam.predict(**prompt)


def test_failed_set_image_leaves_no_image_behind(sam, photos):
    sam.set_image(photos[1])
    with pytest.raises(InputError):
        sam.set_image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(StateError, match="no image set"):
        sam.predict(points=[[10, 10]], labels=[1])


def test_nan_point_on_the_command_line_writes_nothing(sam_bundle, photos, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.fromarray(photos[1]).save(image)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(sam_bundle), "segment", str(image), "--point", "nan,5", "--out", str(tmp_path / "m.png")])
    assert exit_info.value.code == 2 and "finite numbers, found 'nan,5'" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_empty_clip_query(clip, photos):
    with pytest.raises(InputError, match="the query is empty"):
        clip.retrieve("  ", photos[:2])


# -- the command line: every argument checked before any work (a bundle that is not there
# -- proves it: loading it would fail with exit 3) ------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["run", "NOWHERE", "--threads", "0", "segment", "x.png", "--point", "1,1"], "expected an integer >= 1"),
    (["run", "NOWHERE", "segment", "x.png", "--point", "1,1", "--out", "mask.txt"], "expected a .png file name"),
    (["run", "NOWHERE", "segment", "x.png", "--box", "1,2,3"], "must be 4 comma-separated finite numbers"),
    (["run", "NOWHERE", "masks", "x.png", "--crop-layers", "-1"], "invalid choice"),
    (["run", "NOWHERE", "masks", "x.png", "--crop-layers", "9"], "invalid choice"),
    (["run", "NOWHERE", "masks", "x.png", "--points-per-side", "0"], "invalid choice"),
    (["run", "NOWHERE", "masks", "x.png", "--out", "FILE"], "is a file"),
    (["run", "NOWHERE", "retrieve", "--query", " ", "--texts", "a"], "expected a non-empty text"),
    (["run", "NOWHERE", "retrieve", "--query", "a", "--videos", "NOWHERE"], "is not a folder"),
    (["run", "NOWHERE", "retrieve", "--query", "a", "--videos", ".", "--frames", "0"], "expected an integer >= 1"),
    (["run", "NOWHERE", "segment", "x.png", "--text", "", "--clip", "c"], "expected a non-empty text"),
    (["run", "NOWHERE", "segment", "x.png", "--text", "a", "--background", "pink"], "invalid choice"),
    (["run", "NOWHERE", "classify", "x.png", "--labels", ""], "expected a non-empty text"),
    (["quantize", "NOWHERE", "--recipe", "int4", "-o", "o", "--samples", "0"], "expected an integer >= 1"),
    (["quantize", "NOWHERE", "--recipe", "int4", "-o", "o", "--block-size", "24"], "invalid choice"),
    (["quantize", "NOWHERE", "--recipe", "int4", "-o", "o", "--calib", "NOWHERE"], "is not a folder"),
    (["bench", "NOWHERE", "--reference", "random:clip-tiny", "-o", "r", "--runs", "0"], "expected an integer >= 1"),
    (["demo", "--threads", "-2"], "expected an integer >= 1"),
    (["run", "NOWHERE", "--providers", " , ", "classify", "x.png", "--labels", "a"], "expected one or more provider"),
    (["engines", "NOWHERE", "--target", "tensorrt-9"], "invalid choice"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v[2:4] if v[0] == "run" else v[:1]))
def test_bad_argument_is_a_usage_error_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("a file")
    argv = [str(tmp_path / "FILE") if a == "FILE" else str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("broken", ["not a data set", "an image missing"])
def test_a_broken_calibration_data_set_is_an_input_error_and_writes_nothing(broken, clip_bundle, tmp_path, capsys):
    from edgevfm.benchmarks.scene_data import write

    folder = write("captions", tmp_path / "calib", 3, seed=1)
    if broken == "not a data set":
        (folder / "captions.json").write_text('{"camera": "x100"}')
        expected = "holds JSON files but is not a data set calibration can read: no annotations in"
    else:
        (folder / "images" / "00001.png").unlink()
        expected = "holds JSON files but is not a data set calibration can read: no image for image_id 1"
    out = tmp_path / "int8"
    assert main(["quantize", str(clip_bundle), "--recipe", "int8-static", "-o", str(out), "--calib", str(folder)]) == 3
    assert expected in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_old_opset_is_a_usage_error_before_loading(tmp_path, capsys):
    assert main(["export", "random:clip-tiny", "-o", str(tmp_path / "b"), "--opset", "5"]) == 2
    assert "opset 5 is out of range: expected an integer from 14" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exit_codes_are_distinct_and_documented():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()  # the README links to it
    assert len(set(EXIT_CODES)) == len(EXIT_CODES) >= 5
    for code in EXIT_CODES:
        assert f"| {code} |" in page, f"exit code {code} is not in docs/cli.md's table"


# -- fuzzing ---------------------------------------------------------------------------------------
SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]


@fuzz_settings(examples=80)
@given(head=st.sampled_from(SIGNATURES), tail=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".gif"]))
def test_fuzzed_image_file_is_an_image_or_an_input_error(head, tail, suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / f"fuzz{suffix}"
    path.write_bytes(head + tail)
    try:
        image = load_image(path)
    except InputError:
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


ARRAYS = st.tuples(
    st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
    st.lists(st.integers(0, 6), min_size=0, max_size=4),
)


@pytest.mark.parametrize("family", FAMILIES + TRAINED)
@fuzz_settings(examples=80)
@given(array=ARRAYS, size=st.tuples(st.integers(1, 3000), st.integers(1, 40)))
def test_fuzzed_image_preprocesses_or_is_an_input_error(family, array, size, pipelines):
    """Arrays of any dtype and shape, and images of any aspect ratio, through each family's own
    preprocessing: the model's input shape, finite, or an InputError."""
    spec = pipelines[family].manifest["preprocessing"]
    expected = {"blip": (1, 3, 64, 64), "blip2": (1, 3, 56, 56), "blip2-itm": (1, 3, 56, 56), "clip": (1, 3, 224, 224),
                "llava": (1, 3, 56, 56),
                "sam": (1, 3, 128, 128), "clip-shapes": (1, 3, 128, 128), "sam-shapes": (1, 3, 128, 128), "blip-shapes": (1, 3, 128, 128),
                "blip-vqa-shapes": (1, 3, 128, 128), "blip-itm-shapes": (1, 3, 128, 128),
                "blip2-shapes": (1, 3, 128, 128), "llava-shapes": (1, 3, 128, 128)}[family]
    dtype, shape = array
    candidates = [np.zeros(shape, dtype), np.full((size[1], size[0], 3), 200, np.uint8),
                  np.full((size[0], size[1]), 7, np.uint8)]
    for image in candidates:
        try:
            pixels = preprocess([image], spec)
        except InputError:
            continue
        assert pixels.shape == expected and pixels.dtype == np.float32 and np.isfinite(pixels).all()


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-1000, 1000)


@fuzz_settings(examples=120)
@given(points=st.one_of(st.none(), st.lists(st.lists(FLOATS, min_size=0, max_size=3), max_size=3)),
       labels=st.one_of(st.none(), st.lists(st.integers(-1, 3) | st.text(max_size=2), max_size=3)),
       box=st.one_of(st.none(), st.lists(FLOATS, min_size=0, max_size=5)))
def test_fuzzed_sam_prompt_is_an_answer_or_an_input_error(points, labels, box, sam, photos):
    sam.set_image(photos[1])
    try:
        result = sam.predict(points=points, labels=labels, box=box)
    except InputError:
        return
    assert result.masks.shape == (3, 300, 451) and np.isfinite(result.scores).all()


@fuzz_settings(examples=40)
@given(text=st.text(max_size=20) | st.integers(), top=st.integers(-2, 4) | st.booleans() | st.floats(),
       background=st.sampled_from(["grey", "blur", "none", "", "GREY"]),
       boxes=st.lists(st.lists(FLOATS, min_size=0, max_size=5), max_size=3))
def test_fuzzed_text_prompt_is_ranked_masks_or_an_input_error(text, top, background, boxes, trained):
    from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scene

    image = scene(HELD_OUT_SEED, 2).image  # a large cyan triangle and a large red square
    try:
        found = trained["sam-shapes"].segment_text(image, text, trained["clip-shapes"], top=top, boxes=boxes,
                                                   background=background)
    except InputError:
        return
    assert len(found) <= min(top, len(boxes))
    assert all(f.mask.shape == (128, 128) and np.isfinite(f.clip_score) for f in found)


@fuzz_settings(examples=60)
@given(labels=st.lists(st.text(max_size=30), max_size=4) | st.lists(st.integers(), max_size=2))
def test_fuzzed_clip_labels_are_an_answer_or_an_input_error(labels, clip, photos):
    try:
        ranking = clip.classify(photos[1], labels)
    except InputError:
        return
    assert sorted(label for label, _ in ranking) == sorted(labels)
    assert abs(sum(p for _, p in ranking) - 1) < 1e-4


@fuzz_settings(examples=200)
@given(text=st.text(max_size=20) | st.from_regex(r"-?[0-9.e+-]{0,8},-?[0-9.e+-]{0,8}", fullmatch=True))
def test_fuzzed_point_argument_parses_to_finite_numbers_or_a_usage_error(text):
    try:
        values = numbers_arg(2, "X,Y")(text)
    except argparse.ArgumentTypeError:
        return
    assert len(values) == 2 and np.isfinite(values).all()


@fuzz_settings(examples=40)
@given(question=st.text(max_size=40), options=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(-2, 6), "temperature": st.floats(allow_nan=True), "top_p": st.floats(-1, 2),
    "top_k": st.integers(-3, 100), "seed": st.integers(0, 2**31) | st.text(max_size=2),
    "stop_strings": st.lists(st.text(max_size=3), max_size=2), "do_sample": st.booleans()}))
def test_fuzzed_llava_question_and_settings_are_an_answer_or_a_typed_error(question, options, llava, photos):
    try:
        answer = llava.answer(photos[1], question, **options)
    except InputError:  # UsageError is one too
        return
    assert isinstance(answer, str)


@fuzz_settings(examples=30)
@given(prompt=st.none() | st.text(max_size=30), options=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(-2, 6), "num_beams": st.integers(-1, 3), "no_repeat_ngram_size": st.integers(-1, 3),
    "length_penalty": st.floats(allow_nan=True), "do_sample": st.booleans()}))
def test_fuzzed_blip_prompt_and_settings_are_a_caption_or_a_typed_error(prompt, options, blip, photos):
    try:
        caption = blip.caption(photos[1], prompt, **options)
    except InputError:  # UsageError is one too
        return
    assert isinstance(caption, str)


@fuzz_settings(examples=30)
@given(question=st.text(max_size=30), options=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(-2, 6), "num_beams": st.integers(-1, 3), "repetition_penalty": st.floats(-1, 3),
    "do_sample": st.booleans(), "seed": st.integers(0, 2**31) | st.text(max_size=2)}))
def test_fuzzed_blip_question_and_settings_are_an_answer_or_a_typed_error(question, options, blip_vqa_bundle,
                                                                         photos):
    vqa = load(blip_vqa_bundle, threads=1)
    try:
        answer = vqa.answer(photos[1], question, **options)
    except InputError:  # UsageError is one too
        return
    assert isinstance(answer, str)


@fuzz_settings(examples=30)
@given(text=st.none() | st.text(max_size=30), ask=st.booleans(), options=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(-2, 6), "num_beams": st.integers(-1, 3), "no_repeat_ngram_size": st.integers(-1, 3),
    "temperature": st.floats(allow_nan=True), "do_sample": st.booleans()}))
def test_fuzzed_blip2_prompt_question_and_settings_are_text_or_a_typed_error(text, ask, options, blip2, photos):
    try:
        said = blip2.answer(photos[1], text, **options) if ask else blip2.caption(photos[1], text, **options)
    except InputError:  # UsageError is one too
        return
    assert isinstance(said, str)


def test_tensorrt_check_on_hostile_bundles_is_a_typed_error(trt_bundles, tmp_path, capsys):
    """A folder that is not a bundle, a tampered part (hashes rewritten, as a hostile writer would),
    and a part replaced by bytes that are no graph: each a typed error (exit 3), never a traceback;
    a tampered part that parses is checked like any other (the contrib operator planted is found)."""
    import json

    import onnx
    from onnx import helper

    from helpers import copy_bundle, edit_manifest

    assert main(["check", str(tmp_path)]) == 3
    assert "invalid bundle" in capsys.readouterr().err
    garbage = copy_bundle(trt_bundles["clip_bundle", "trt-int8"], tmp_path / "garbage")
    (garbage / "text.onnx").write_bytes(b"\x08\x07not a graph" * 100)
    edit_manifest(garbage, lambda m: None, rehash=True)
    assert main(["check", str(garbage)]) == 3
    assert "part 'text' (text.onnx) is not an ONNX graph" in capsys.readouterr().err
    planted = copy_bundle(trt_bundles["clip_bundle", "trt-int8"], tmp_path / "planted")
    model = onnx.load(str(planted / "vision.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Softmax")
    node.domain, node.op_type = "com.microsoft", "FastGelu"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(planted / "vision.onnx"))
    edit_manifest(planted, lambda m: None, rehash=True)
    assert main(["check", str(planted), "--target", "tensorrt-10.3", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [(f["part"], f["kind"], f["node"]) for f in found] == [("vision", "domain", node.name)]

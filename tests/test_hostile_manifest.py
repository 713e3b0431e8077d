"""Hostile: manifests and bundle files. Every bad bundle is one ``BundleError`` at load time (never
at the first call, never a traceback), capped in size and quick to refuse; and a fuzzer mutating
each family's manifest finds nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgevfm.runtime import BundleError, load
from edgevfm.runtime.bundle import MAX_FILES, MAX_MANIFEST_BYTES
from edgevfm.runtime.schema import MAX_PROBLEMS

from helpers import copy_bundle, edit_manifest, fuzz_settings

FAMILIES = ["blip", "blip2", "blip2-itm", "clip", "llava", "sam"]


@pytest.fixture
def bundles(blip_bundle, blip2_bundle, blip2_itm_bundle, clip_bundle, llava_bundle, sam_bundle):
    return {"blip": blip_bundle, "blip2": blip2_bundle, "blip2-itm": blip2_itm_bundle, "clip": clip_bundle,
            "llava": llava_bundle, "sam": sam_bundle}


@pytest.fixture(params=FAMILIES)
def family_bundle(request, bundles, tmp_path):
    """A private copy of each family's FP32 bundle, free to damage."""
    return request.param, copy_bundle(bundles[request.param], tmp_path / "b")


def _first_part(bundle) -> str:
    return next(iter(json.loads((bundle / "manifest.json").read_text())["parts"]))


def _refused(bundle, *fragments: str) -> BundleError:
    with pytest.raises(BundleError) as info:
        load(bundle)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def _use(pipeline, photos) -> None:
    """The first call a user makes: it must work whenever load did."""
    if pipeline.family == "clip":
        assert len(pipeline.classify(photos[1], ["a cat", "a dog"])) == 2
    elif pipeline.family == "llava":
        assert isinstance(pipeline.answer(photos[1], "What is this?", max_new_tokens=3), str)
    elif getattr(pipeline, "task", None) == "retrieval":
        assert 0 <= pipeline.match(photos[1], "a cat")["itm"] <= 1
    elif pipeline.family in ("blip", "blip2"):
        assert isinstance(pipeline.caption(photos[1], max_new_tokens=3), str)
    else:
        pipeline.set_image(photos[1])
        assert pipeline.predict(points=[[200, 150]], labels=[1]).masks.shape == (3, 300, 451)


def test_inputs_null(family_bundle):
    _, bundle = family_bundle
    part = _first_part(bundle)
    edit_manifest(bundle, lambda m: m["parts"][part].update(inputs=None))
    _refused(bundle, f"manifest.parts[{part!r}].inputs is null, expected a list")


def test_part_that_is_a_number(family_bundle):
    _, bundle = family_bundle
    part = _first_part(bundle)
    edit_manifest(bundle, lambda m: m["parts"].update({part: 7}))
    _refused(bundle, f"manifest.parts[{part!r}] is an integer 7, expected an object with file")


def test_empty_preprocessing_fails_at_load_not_at_the_first_call(family_bundle):
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m.update(preprocessing={}))
    _refused(bundle, "manifest.preprocessing has no 'resize'", "manifest.preprocessing has no 'mean'")


def test_format_version_below_one(family_bundle):
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m.update(format_version=0))
    _refused(bundle, "manifest.format_version is 0, expected an integer in [1, 1]")


def test_nan_constant(clip_bundle, tmp_path):
    bundle = copy_bundle(clip_bundle, tmp_path / "b")
    text = (bundle / "manifest.json").read_text().replace('"logit_scale": ', '"logit_scale": NaN, "was": ')
    (bundle / "manifest.json").write_text(text)
    _refused(bundle, "manifest.constants.logit_scale is nan, expected a finite number above 0")


def test_sizes_that_disagree_with_the_graph(sam_bundle, tmp_path):
    bundle = copy_bundle(sam_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda m: m["constants"].update(low_res_size=64))
    _refused(bundle, "constants.low_res_size against the prompt_decoder's mask_input: expected [64, 64], found [32, 32]")


def test_manifest_dtype_that_disagrees_with_the_graph(clip_bundle, tmp_path):
    bundle = copy_bundle(clip_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda m: m["parts"]["text"]["inputs"][0].update(dtype="float32"))
    _refused(bundle, "manifest declares 'input_ids' as float32", "the graph has int64")


def test_a_million_files_is_refused_at_once_with_a_short_error(family_bundle):
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m.update(files={f"f{i}.onnx": "0" * 64 for i in range(1_000_000)}))
    assert (bundle / "manifest.json").stat().st_size > MAX_MANIFEST_BYTES
    error = _refused(bundle, "more than the 8388608 a manifest may hold")
    assert len(str(error)) < 500


def test_too_many_files_under_the_size_cap(family_bundle):
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m["files"].update({f"{i}": "0" * 64 for i in range(50_000)}))
    error = _refused(bundle, "manifest.files has 5000", f"entries, expected 1 to {MAX_FILES}")
    assert len(str(error)) < 2000


def test_problems_are_capped(family_bundle):
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m.update(parts={f"p{i}": {"file": i} for i in range(60)}))
    error = _refused(bundle, f"stopped after {MAX_PROBLEMS} problems")
    assert len(error.problems) == MAX_PROBLEMS + 1 and len(str(error)) < 5000


def test_deeply_nested_json(family_bundle):
    _, bundle = family_bundle
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(bundle, "is not valid JSON")


def test_part_that_is_not_onnx(family_bundle):
    _, bundle = family_bundle
    part = _first_part(bundle)
    file = json.loads((bundle / "manifest.json").read_text())["parts"][part]["file"]
    (bundle / file).write_bytes(b"this is not a graph")
    edit_manifest(bundle, lambda m: None, rehash=True)
    _refused(bundle, f"part {part!r} ({file}): the onnxruntime backend cannot load it")


def test_unknown_backend(family_bundle):
    _, bundle = family_bundle
    part = _first_part(bundle)
    edit_manifest(bundle, lambda m: m["parts"][part].update(backend="tensorflow"))
    _refused(bundle, "unknown backend 'tensorflow': expected one of onnxruntime")


def test_int8_arithmetic_that_is_not_one_we_know(family_bundle):
    _, bundle = family_bundle
    part = _first_part(bundle)
    edit_manifest(bundle, lambda m: m["parts"][part].update(int8_activations="fast"))
    _refused(bundle, f"manifest.parts[{part!r}].int8_activations", "saturation-safe")


def test_recipe_steps_that_are_not_an_object_are_read_as_none(family_bundle, photos):
    """What the saturation check reads of ``recipe.parts`` is data: a list there is no crash."""
    _, bundle = family_bundle
    edit_manifest(bundle, lambda m: m.update(recipe={"name": "int8-static", "parts": [1, 2]}))
    _use(load(bundle), photos)


def test_corrupt_tokenizer_with_a_matching_hash(clip_bundle, tmp_path):
    bundle = copy_bundle(clip_bundle, tmp_path / "b")
    (bundle / "tokenizer.json").write_text('{"model": 3}')
    edit_manifest(bundle, lambda m: None, rehash=True)
    _refused(bundle, "the clip pipeline cannot use it: its tokenizer file 'tokenizer.json' cannot be read")


def test_tokenizer_file_must_be_listed(clip_bundle, tmp_path):
    bundle = copy_bundle(clip_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda m: m["tokenizer"].update(file="other.json"))
    _refused(bundle, "manifest.tokenizer.file names 'other.json', which is not listed (and hashed) in 'files'")


def test_unlisted_files_are_refused(family_bundle):
    _, bundle = family_bundle
    (bundle / "extra.bin").write_bytes(b"\0" * 16)
    _refused(bundle, "file 'extra.bin' is in the bundle but not listed in 'files'")


def test_symlinked_folder_out_of_the_bundle_is_refused(family_bundle, tmp_path):
    _, bundle = family_bundle
    (tmp_path / "elsewhere").mkdir()
    (bundle / "data").symlink_to(tmp_path / "elsewhere")
    _refused(bundle, "file 'data' is in the bundle but not listed")


def test_external_data_is_hashed_like_any_file(clip_bundle, tmp_path, photos):
    """A part whose weights live in ONNX external data loads when that file is listed and hashed,
    and is refused when it is not (the runtime would otherwise load unhashed weights)."""
    import onnx

    bundle = copy_bundle(clip_bundle, tmp_path / "b")
    expected = load(clip_bundle).embed_images(photos[:1])
    model = onnx.load(str(bundle / "vision.onnx"))
    onnx.save_model(model, str(bundle / "vision.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="vision.onnx.data", size_threshold=0)
    edit_manifest(bundle, lambda m: m["files"].update({"vision.onnx.data": "0" * 64}))
    edit_manifest(bundle, lambda m: None, rehash=True)
    np.testing.assert_allclose(load(bundle).embed_images(photos[:1]), expected, atol=1e-6)
    edit_manifest(bundle, lambda m: m["files"].pop("vision.onnx.data"))
    _refused(bundle, "file 'vision.onnx.data' is in the bundle but not listed")


# -- fuzzing ------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _paths(inner, prefix + (i,))


def _mutate(manifest: dict, path: tuple, action: str, value) -> None:
    *parents, last = path
    holder = manifest
    for key in parents:
        holder = holder[key]
    if action == "delete" and isinstance(holder, dict):
        del holder[last]
    elif action == "delete":
        holder.pop(last)
    else:
        holder[last] = value


@pytest.mark.parametrize("family", FAMILIES)
@fuzz_settings(examples=60)
@given(data=st.data())
def test_fuzzed_manifest_loads_and_works_or_is_one_bundle_error(family, data, bundles, photos, tmp_path_factory):
    bundle = copy_bundle(bundles[family], tmp_path_factory.mktemp("fuzz") / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _paths(manifest) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        action = data.draw(st.sampled_from(["replace", "delete"]), label="action")
        _mutate(manifest, path, action, data.draw(JSON, label="value"))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        pipeline = load(bundle, threads=1)
    except BundleError as exc:
        assert 0 < len(exc.problems) <= MAX_PROBLEMS + 1
        return
    _use(pipeline, photos)

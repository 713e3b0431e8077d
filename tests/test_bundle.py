"""The bundle contract: every way a bundle can be untrustworthy is one clear BundleError, and
writers never leave a half-written bundle."""

from __future__ import annotations

import json
import shutil

import pytest

from edgevfm.runtime import BundleError, BundleExistsError, FORMAT_VERSION, load, open_bundle
from edgevfm.runtime.bundle import write_manifest
from edgevfm.runtime.errors import OutputError
from edgevfm.runtime.output import staged_bundle

from helpers import write_fake_bundle


@pytest.fixture
def bundle_copy(clip_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(clip_bundle, copy)
    return copy


def _edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_valid_bundle_opens_with_its_parts(clip_bundle):
    bundle = open_bundle(clip_bundle)
    assert bundle.family == "clip"
    assert sorted(bundle.parts) == ["text", "vision"]
    assert bundle.manifest["format_version"] == FORMAT_VERSION


def test_missing_manifest(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load(bundle_copy)


def test_malformed_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load(bundle_copy)


def test_newer_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="newer than this edgevfm reads.*upgrade edgevfm"):
        load(bundle_copy)


def test_non_integer_format_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(format_version="1"))
    with pytest.raises(BundleError, match="expected an integer"):
        load(bundle_copy)


def test_file_outside_the_bundle(bundle_copy, tmp_path):
    (tmp_path / "evil.onnx").write_bytes(b"x")

    def escape(m):
        m["files"]["../evil.onnx"] = m["files"].pop("vision.onnx")
        m["parts"]["vision"]["file"] = "../evil.onnx"

    _edit_manifest(bundle_copy, escape)
    with pytest.raises(BundleError, match="lies outside the bundle"):
        load(bundle_copy)


def test_hash_mismatch(bundle_copy):
    with open(bundle_copy / "text.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="'text.onnx' does not match its sha256"):
        load(bundle_copy)


def test_every_problem_is_reported_at_once(bundle_copy):
    (bundle_copy / "tokenizer.json").write_text("{}")
    (bundle_copy / "vision.onnx").unlink()
    with pytest.raises(BundleError) as info:
        load(bundle_copy)
    assert len(info.value.problems) == 2
    assert "'vision.onnx' is missing" in str(info.value)
    assert "'tokenizer.json' does not match" in str(info.value)


def test_part_missing_an_input_the_pipeline_needs(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["parts"]["text"]["inputs"].pop(1))
    with pytest.raises(BundleError, match="part 'text' has no input 'attention_mask'"):
        load(bundle_copy)


def test_manifest_disagreeing_with_the_graph(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["parts"]["vision"]["outputs"].append(
        {"name": "extra", "dtype": "float32", "shape": [1]}))
    with pytest.raises(BundleError, match="manifest declares outputs .* the graph has"):
        load(bundle_copy)


def test_unknown_family(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(family="nosuch"))
    with pytest.raises(BundleError, match="unknown family 'nosuch': expected one of blip, blip2, clip, llava, sam"):
        load(bundle_copy)


def test_not_a_folder(tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        open_bundle(tmp_path / "absent")


def test_staged_write_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_bundle(out) as stage:
            (stage / "part.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    write_fake_bundle(out)
    with pytest.raises(BundleExistsError, match="already exists.*--force"):
        with staged_bundle(out):
            pass
    assert (out / "weights.onnx").read_text() == "old weights"
    with staged_bundle(out, force=True) as stage:
        (stage / "new.onnx").write_text("new")
        write_manifest(stage, {"family": "x"})
    assert not (out / "weights.onnx").exists() and (out / "new.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_text("precious")
    with pytest.raises(OutputError, match="is not an edgevfm bundle.*left untouched"):
        with staged_bundle(out, force=True):
            pass
    assert (out / "holiday.jpg").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]

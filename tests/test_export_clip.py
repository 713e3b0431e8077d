"""CLIP export: parity with PyTorch at shapes other than the trace's, the real loading paths
(preset, local folder, hub id), and every bad checkpoint as a typed error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevfm.export.api import export
from edgevfm.export.checkpoint import load_checkpoint
from edgevfm.export.families.clip import TextTower, VisionTower
from edgevfm.runtime import BundleExistsError, UnknownNameError, load
from edgevfm.runtime.backends import OrtBackend
from edgevfm.export.errors import CheckpointError

from helpers import assert_close

ATOL, RTOL = 1e-4, 1e-3  # the CLIP spec's stated export tolerance


def test_manifest_records_what_the_runtime_needs(clip_bundle):
    manifest = json.loads((clip_bundle / "manifest.json").read_text())
    assert manifest["source"]["id"] == "random:clip-tiny" and len(manifest["source"]["config_sha256"]) == 64
    assert manifest["preprocessing"]["interpolation"] == "bicubic"
    assert manifest["preprocessing"]["resize"] == {"shortest_edge": 224}
    assert manifest["tokenizer"]["max_length"] == 77
    assert manifest["constants"]["logit_scale"] > 0
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["tools"])
    for part in ("vision", "text"):
        assert manifest["export"]["validation"][part]["inputs"]  # validated at export time
    assert manifest["parts"]["text"]["inputs"][0]["shape"] == ["batch", "sequence"]


def test_vision_parity_at_batch_3(clip_bundle, clip_checkpoint, photos):
    pipeline = load(clip_bundle)
    pixels = pipeline.image_inputs(photos[:3])["pixel_values"]
    got = OrtBackend(clip_bundle / "vision.onnx").run({"pixel_values": pixels})["image_embeds"]
    with torch.no_grad():
        want = VisionTower(clip_checkpoint.model).eval()(torch.from_numpy(pixels)).numpy()
        # the tower runs its last layer for the class token only: the same numbers as transformers' whole model
        hf = clip_checkpoint.model.eval().get_image_features(pixel_values=torch.from_numpy(pixels))
        hf = getattr(hf, "pooler_output", hf).numpy()
    assert_close(want, hf, 1e-5, 1e-5, "class-token-only last layer against transformers")
    assert got.shape == (3, clip_checkpoint.model.config.projection_dim)
    assert np.abs(want).max() > 1e-3, "degenerate reference: outputs ~0 would make parity meaningless"
    assert_close(got, want, ATOL, RTOL, "vision embeddings")


def test_text_parity_at_other_batch_and_lengths(clip_bundle, clip_checkpoint):
    tokens = load(clip_bundle).text_inputs(["a photo of a cat", "dog", "a rocket on the launch pad at night"])
    tokens = {k: v[:, :20] for k, v in tokens.items()}  # sequence 20: neither the trace's 7 nor 77
    got = OrtBackend(clip_bundle / "text.onnx").run(tokens)["text_embeds"]
    with torch.no_grad():
        want = TextTower(clip_checkpoint.model).eval()(*(torch.from_numpy(v) for v in tokens.values())).numpy()
    assert np.abs(want).max() > 1e-3
    assert_close(got, want, ATOL, RTOL, "text embeddings")


def test_presets_are_seeded(clip_checkpoint):
    again = load_checkpoint("random:clip-tiny")
    assert again.source == clip_checkpoint.source
    for a, b in zip(again.model.state_dict().values(), clip_checkpoint.model.state_dict().values()):
        assert torch.equal(a, b)


def _save_folder(folder):
    checkpoint = load_checkpoint("random:clip-tiny")  # a fresh copy: saving edits the config
    checkpoint.model.save_pretrained(folder)
    checkpoint.assets["tokenizer"].save_pretrained(folder)
    checkpoint.assets["image_processor"].save_pretrained(folder)
    return folder


def test_export_from_a_local_folder_matches_the_preset(clip_checkpoint, clip_bundle, tmp_path, photos):
    folder = _save_folder(tmp_path / "ckpt")
    out = export(str(folder), tmp_path / "bundle", show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["id"] == str(folder)
    assert manifest["source"]["config_sha256"] == clip_checkpoint.source["config_sha256"]
    assert manifest["tokenizer"] == json.loads((clip_bundle / "manifest.json").read_text())["tokenizer"]
    assert_close(load(out).embed_images(photos[:2]), load(clip_bundle).embed_images(photos[:2]), 1e-5,
                 what="folder vs preset embeddings")


def test_family_override_and_unknown_family(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown family 'nosuch': expected one of blip, blip2, clip, llava, sam"):
        export("random:clip-tiny", tmp_path / "b", family="nosuch", show_progress=False)
    assert not (tmp_path / "b").exists()


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(UnknownNameError, match="random:clip-tiny, random:clip-vit-b32"):
        export("random:nosuch", tmp_path / "b", show_progress=False)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export(str(tmp_path / "absent"), tmp_path / "b", show_progress=False)


def test_folder_without_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        export(str(tmp_path / "ckpt"), tmp_path / "b", show_progress=False)


def test_corrupt_weights(tmp_path):
    folder = _save_folder(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(CheckpointError, match="could not load the clip checkpoint"):
        export(str(folder), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "b").exists()


def test_unsupported_architecture(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownNameError, match="unknown model_type 'bert': expected one of blip, blip-2, clip, llava, sam"):
        export(str(tmp_path / "ckpt"), tmp_path / "b", show_progress=False)


def test_unreachable_hub_id_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="openai/clip-vit-base-patch32"):
        export("openai/clip-vit-base-patch32", tmp_path / "b", show_progress=False)


def test_existing_output_is_refused_before_any_work(clip_bundle):
    with pytest.raises(BundleExistsError, match="--force"):
        export("random:nosuch", clip_bundle, show_progress=False)

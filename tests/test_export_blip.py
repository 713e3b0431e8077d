"""BLIP export (work in progress): three parts whose parity with PyTorch was proven at past length
0 (with left padding) and > 0."""

from __future__ import annotations

import json


def test_parts_and_their_validation(blip_bundle):
    manifest = json.loads((blip_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "cross_kv", "text_decoder"]
    variants = manifest["export"]["validation"]["text_decoder"]["variants"]
    assert [v["inputs"]["past_key.0"][2] for v in variants] == [0, 7]
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)


def test_hub_shaped_folder_exports_and_captions_alike(blip_checkpoint, blip_bundle, tmp_path, photos):
    """A folder as `save_pretrained` writes Salesforce/blip-image-captioning-* exports to the
    same bundle as the preset it was saved from."""
    from edgevfm.export.api import export
    from edgevfm.runtime import load

    folder = tmp_path / "ckpt"
    blip_checkpoint.model.save_pretrained(folder)
    blip_checkpoint.assets["tokenizer"].save_pretrained(folder)
    blip_checkpoint.assets["image_processor"].save_pretrained(folder)
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    ours, preset = (json.loads((b / "manifest.json").read_text()) for b in (bundle, blip_bundle))
    assert ours["text"] == preset["text"] and ours["preprocessing"] == preset["preprocessing"]
    assert load(bundle).caption(photos[1], max_new_tokens=8) == load(blip_bundle).caption(photos[1], max_new_tokens=8)

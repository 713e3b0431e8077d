"""BLIP export (work in progress): three parts whose parity with PyTorch was proven at past length
0 (with left padding) and > 0."""

from __future__ import annotations

import json

import pytest

from helpers import save_checkpoint


def test_parts_and_their_validation(blip_bundle):
    manifest = json.loads((blip_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "cross_kv", "text_decoder"]
    variants = manifest["export"]["validation"]["text_decoder"]["variants"]
    assert [v["inputs"]["past_key.0"][2] for v in variants] == [0, 7]
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_hub_shaped_folder_exports_and_runs_alike(task, blip_checkpoint, blip_bundle, blip_vqa_checkpoint,
                                                  blip_vqa_bundle, tmp_path, photos):
    """A folder as `save_pretrained` writes Salesforce/blip-image-captioning-* (or blip-vqa-base)
    exports to the same bundle as the preset it was saved from."""
    from edgevfm.export.api import export
    from edgevfm.runtime import load

    checkpoint, preset_bundle = {"caption": (blip_checkpoint, blip_bundle), "vqa": (blip_vqa_checkpoint,
                                                                                    blip_vqa_bundle)}[task]
    folder = save_checkpoint(checkpoint, tmp_path / "ckpt")
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    ours, preset = (json.loads((b / "manifest.json").read_text()) for b in (bundle, preset_bundle))
    assert ours["task"] == preset["task"] == task and ours["text"] == preset["text"]
    assert ours["preprocessing"] == preset["preprocessing"]
    run = (lambda p: p.caption(photos[1], max_new_tokens=8)) if task == "caption" else (
        lambda p: p.answer(photos[1], "what is it?"))
    assert run(load(bundle)) == run(load(preset_bundle))


def test_an_unknown_blip_architecture_is_refused_with_what_is_built(blip_checkpoint, tmp_path):
    from edgevfm.export.checkpoint import load_checkpoint
    from edgevfm.export.errors import CheckpointError

    folder = save_checkpoint(blip_checkpoint, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["BlipModel"]}))
    with pytest.raises(CheckpointError, match="is a BlipModel: edgevfm exports BLIP as one of "
                                              "BlipForConditionalGeneration, BlipForQuestionAnswering, "
                                              "BlipForImageTextRetrieval"):
        load_checkpoint(str(folder))

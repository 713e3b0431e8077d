"""Checkpoint folders in the layout transformers 5 writes: ``Processor.save_pretrained`` puts the
image processor inside ``processor_config.json`` (hub repositories still have
``preprocessor_config.json``). Each family's own Processor saves such a folder; it exports, the
export's parity check against transformers passes, and the bundle preprocesses and tokenizes as
the preset's bundle does."""

from __future__ import annotations

import json

import pytest

from edgevfm.export.api import export


def _processor(family: str, checkpoint):
    import transformers

    image, tokenizer = checkpoint.assets["image_processor"], checkpoint.assets.get("tokenizer")
    if family == "sam":
        return transformers.SamProcessor(image_processor=image)
    if family == "llava":
        return transformers.LlavaProcessor(image_processor=image, tokenizer=tokenizer,
                                           chat_template=checkpoint.assets["chat_template"])
    if family == "blip2":
        return transformers.Blip2Processor(image_processor=image, tokenizer=tokenizer,
                                           num_query_tokens=checkpoint.model.config.num_query_tokens)
    cls = {"clip": transformers.CLIPProcessor, "blip": transformers.BlipProcessor}[family]
    return cls(image_processor=image, tokenizer=tokenizer)


FAMILIES = {"clip": ("clip_checkpoint", "clip_bundle"), "sam": ("sam_checkpoint", "sam_bundle"),
            "llava": ("llava_checkpoint", "llava_bundle"), "blip": ("blip_checkpoint", "blip_bundle"),
            "blip2": ("blip2_checkpoint", "blip2_bundle")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_folder_saved_by_the_family_processor_exports(family, request, tmp_path):
    checkpoint, preset_bundle = (request.getfixturevalue(f) for f in FAMILIES[family])
    folder = tmp_path / "ckpt"
    checkpoint.model.save_pretrained(folder)
    _processor(family, checkpoint).save_pretrained(folder)
    assert (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").exists()
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)  # parity with transformers is checked
    ours, preset = (json.loads((b / "manifest.json").read_text()) for b in (bundle, preset_bundle))
    assert ours["family"] == family
    for section in ("preprocessing", "tokenizer", "chat"):
        assert ours.get(section) == preset.get(section), section

"""BLIP-2 export: three parts (vision: ViT + Q-Former + projection; embed; llm: OPT, the plain
graph) proven against PyTorch at past 0 with left padding and past > 0; hub-shaped folders export
alike; Flan-T5 checkpoints and the builder graph are refused with what to do."""

from __future__ import annotations

import json

import pytest

from edgevfm.runtime import load

def test_parts_and_their_validation(blip2_bundle, blip2_checkpoint):
    manifest = json.loads((blip2_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "embed", "llm"]
    assert manifest["prompt"]["image_seq_length"] == blip2_checkpoint.model.config.num_query_tokens == 8
    assert manifest["tokenizer"]["add_bos"] is True  # OPT starts every text with </s>
    variants = manifest["export"]["validation"]["llm"]["variants"]
    assert [v["inputs"]["past_key.0"][2] for v in variants] == [0, 7]
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)
    assert manifest["export"]["validation"]["vision"]["image_features"]["max_abs_diff"] < 1e-4


def test_hub_shaped_folder_exports_and_runs_alike(blip2_checkpoint, blip2_bundle, tmp_path, photos):
    """A folder as `save_pretrained` writes Salesforce/blip2-opt-2.7b exports to the same bundle as
    the preset it was saved from."""
    from edgevfm.export.api import export

    folder = tmp_path / "ckpt"
    blip2_checkpoint.model.save_pretrained(folder)
    blip2_checkpoint.assets["tokenizer"].save_pretrained(folder)
    blip2_checkpoint.assets["image_processor"].save_pretrained(folder)
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    ours, preset = (json.loads((b / "manifest.json").read_text()) for b in (bundle, blip2_bundle))
    for section in ("preprocessing", "tokenizer", "prompt", "llm"):
        assert ours[section] == preset[section], section
    assert load(bundle).caption(photos[1], max_new_tokens=8) == load(blip2_bundle).caption(photos[1],
                                                                                         max_new_tokens=8)


def test_flan_t5_and_the_builder_graph_are_refused_with_what_to_do(blip2_checkpoint, tmp_path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from edgevfm.export.api import export
    from edgevfm.export.checkpoint import load_checkpoint
    from edgevfm.runtime.errors import CheckpointError, ExportError

    config = blip2_checkpoint.model.config
    t5 = Blip2Config(vision_config=config.vision_config.to_dict(), qformer_config=config.qformer_config.to_dict(),
                     text_config=dict(model_type="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                      vocab_size=config.text_config.vocab_size), num_query_tokens=8)
    folder = tmp_path / "t5"
    Blip2ForConditionalGeneration(t5).save_pretrained(folder)
    blip2_checkpoint.assets["tokenizer"].save_pretrained(folder)
    blip2_checkpoint.assets["image_processor"].save_pretrained(folder)
    with pytest.raises(CheckpointError, match="has a t5 \\(encoder-decoder\\) language model: edgevfm exports "
                                              "BLIP-2 with a decoder-only language model"):
        load_checkpoint(str(folder))
    with pytest.raises(ExportError, match="found 'opt': export with --llm-graph plain"):
        export("random:blip2-tiny", tmp_path / "b", llm_graph="builder", show_progress=False)
    assert not (tmp_path / "b").exists()


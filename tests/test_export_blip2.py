"""BLIP-2 export, with OPT or Llama (vision: ViT + Q-Former + projection; embed; llm, the plain
graph) and with T5 (vision; embed; encoder; cross_kv; text_decoder), every part proven against PyTorch, the
decoders at past 0 with padding and past > 0; hub-shaped folders export alike; other language
models and the builder graph are refused with what to do."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from helpers import save_checkpoint

from edgevfm.runtime import load


def test_opt_parts_and_their_validation(blip2_bundle, blip2_checkpoint):
    manifest = json.loads((blip2_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "embed", "llm"]
    assert manifest["prompt"]["image_seq_length"] == blip2_checkpoint.model.config.num_query_tokens == 8
    assert manifest["tokenizer"]["add_bos"] is True and manifest["tokenizer"]["add_eos"] is False  # OPT: </s> first
    variants = manifest["export"]["validation"]["llm"]["variants"]
    assert [v["inputs"]["past_key.0"][2] for v in variants] == [0, 7]
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)
    assert manifest["export"]["validation"]["vision"]["image_features"]["max_abs_diff"] < 1e-4


def test_t5_parts_and_their_validation(blip2_t5_bundle):
    manifest = json.loads((blip2_t5_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "embed", "encoder", "cross_kv", "text_decoder"]
    assert manifest["tokenizer"]["add_bos"] is False and manifest["tokenizer"]["add_eos"] is True  # T5: </s> last
    assert manifest["llm"]["decoder_start_token_id"] == 0
    validation = manifest["export"]["validation"]
    variants = validation["text_decoder"]["variants"]
    assert [v["inputs"]["past_key.0"][2] for v in variants] == [0, 7]
    assert [v["inputs"]["encoder_attention_mask"][1] for v in variants] == [11, 11]  # the trace had 6
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)
    assert validation["encoder"]["encoder_states"]["max_abs_diff"] < 1e-4
    assert validation["encoder"]["inputs"]["inputs_embeds"][1] == 11
    names = {t["name"] for t in manifest["parts"]["text_decoder"]["inputs"]}
    assert "position_ids" not in names and "cross_key.1" in names  # relative positions; cross K/V given


def test_llama_parts_and_their_validation(blip2_llama_bundle):
    """A Llama language model (SmolLM2's architecture: grouped-query attention, rotary positions)
    takes the plain llm graph, validated at past 0 with padding and past > 0."""
    manifest = json.loads((blip2_llama_bundle / "manifest.json").read_text())
    assert list(manifest["parts"]) == ["vision", "embed", "llm"]
    assert manifest["llm"]["kv_heads"] == 2 and manifest["llm"]["head_dim"] == 16
    variants = manifest["export"]["validation"]["llm"]["variants"]
    assert [v["inputs"]["past_key.0"][1:3] for v in variants] == [[2, 0], [2, 7]]
    assert all(v["logits"]["max_abs_diff"] < 1e-4 for v in variants)


@pytest.mark.parametrize("which", ["opt", "llama", "t5"])
def test_hub_shaped_folder_exports_and_runs_alike(which, blip2_checkpoint, blip2_bundle, blip2_t5_checkpoint,
                                                  blip2_t5_bundle, tmp_path, photos, request):
    """A folder as `save_pretrained` writes Salesforce/blip2-opt-2.7b (or blip2-flan-t5-xl) exports
    to the same bundle as the preset it was saved from."""
    from edgevfm.export.api import export

    if which == "llama":
        checkpoint, preset_bundle = (request.getfixturevalue("blip2_llama_checkpoint"),
                                     request.getfixturevalue("blip2_llama_bundle"))
    else:
        checkpoint, preset_bundle = {"opt": (blip2_checkpoint, blip2_bundle),
                                     "t5": (blip2_t5_checkpoint, blip2_t5_bundle)}[which]
    folder = save_checkpoint(checkpoint, tmp_path / "ckpt")
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    ours, preset = (json.loads((b / "manifest.json").read_text()) for b in (bundle, preset_bundle))
    for section in ("preprocessing", "tokenizer", "prompt", "llm"):
        assert ours[section] == preset[section], section
    assert list(ours["parts"]) == list(preset["parts"])
    assert load(bundle).answer(photos[1], "what is it?") == load(preset_bundle).answer(photos[1], "what is it?")


def test_other_language_models_and_the_builder_graph_are_refused_with_what_to_do(blip2_checkpoint, tmp_path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from edgevfm.export.api import export
    from edgevfm.export.checkpoint import load_checkpoint
    from edgevfm.export.errors import CheckpointError, ExportError

    config = blip2_checkpoint.model.config
    mistral = Blip2Config(vision_config=config.vision_config.to_dict(), qformer_config=config.qformer_config.to_dict(),
                          text_config=dict(model_type="mistral", hidden_size=64, intermediate_size=96,
                                           num_hidden_layers=1, num_attention_heads=4,
                                           vocab_size=config.text_config.vocab_size), num_query_tokens=8)
    folder = save_checkpoint(replace(blip2_checkpoint, model=Blip2ForConditionalGeneration(mistral)), tmp_path / "m")
    with pytest.raises(CheckpointError, match="has a mistral language model: edgevfm exports BLIP-2 with OPT "
                                              "\\(Salesforce/blip2-opt-\\*\\), Flan-T5 .* or Llama"):
        load_checkpoint(str(folder))
    with pytest.raises(ExportError, match="found 'opt': export with --llm-graph plain"):
        export("random:blip2-tiny", tmp_path / "b", llm_graph="builder", show_progress=False)
    assert not (tmp_path / "b").exists()

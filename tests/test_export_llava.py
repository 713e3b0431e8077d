"""LLaVA export: three parts whose parity with PyTorch was proven at past length 0 and > 0, at
sequence lengths other than the trace's, with grouped-query attention; hub-shaped folders of both
text models (Llama, Qwen2) load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from edgevfm.export.api import export
from edgevfm.export.checkpoint import load_checkpoint
from edgevfm.runtime import load
from edgevfm.export.errors import CheckpointError


@pytest.mark.parametrize("graph, past", [("builder", "past_key_values.0.key"), ("plain", "past_key.0")])
def test_parts_and_their_validation(graph, past, llava_bundle, llava_plain_bundle, llava_checkpoint):
    bundle = {"builder": llava_bundle, "plain": llava_plain_bundle}[graph]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(manifest["parts"]) == ["embed", "llm", "vision"]
    # the default (builder) is not a choice made: only an explicit one is recorded
    assert manifest["export"]["options"] == ({} if graph == "builder" else {"llm_graph": "plain"})
    text = llava_checkpoint.model.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads  # grouped-query attention
    variants = manifest["export"]["validation"]["llm"]["variants"]
    pasts = [v["inputs"][past][2] for v in variants]
    lengths = [v["inputs"]["inputs_embeds"][1] for v in variants]
    assert pasts == [0, 7] and 4 not in lengths  # the trace example had past 3, sequence 4
    for variant in variants:
        assert variant["logits"]["max_abs_diff"] < 1e-4
    assert manifest["chat"]["image_seq_length"] == 16 and manifest["llm"]["kv_heads"] == 2


def test_builder_graph_is_fused_and_the_plain_graph_is_not(llava_bundle, llava_plain_bundle):
    """What makes the builder graph faster: attention fused with rotary inside (no position ids)."""
    import onnx

    def ops_and_inputs(bundle):
        graph = onnx.load(str(bundle / "llm.onnx"), load_external_data=False).graph
        return {n.op_type for n in graph.node}, {i.name for i in graph.input}

    ops, inputs = ops_and_inputs(llava_bundle)
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops and "position_ids" not in inputs
    ops, inputs = ops_and_inputs(llava_plain_bundle)
    assert "GroupQueryAttention" not in ops and "position_ids" in inputs


def test_what_the_builder_cannot_write_is_refused_before_any_work(tmp_path):
    from edgevfm.export.genai_builder import check_builder
    from edgevfm.export.errors import ExportError
    from edgevfm.runtime.errors import UsageError

    with pytest.raises(ExportError, match=r"multiple of 16, found 12: export with --llm-graph plain"):
        check_builder("llama", 12)
    with pytest.raises(ExportError, match=r"multiple of 16, found 8: export with --llm-graph plain"):
        check_builder("llama", 8)
    with pytest.raises(ExportError, match=r"found 'opt': export with --llm-graph plain"):
        check_builder("opt", 64)
    with pytest.raises(UsageError, match=r"llm_graph must be one of builder, plain, found 'fused'"):
        export("random:llava-tiny", tmp_path / "b", llm_graph="fused", show_progress=False)
    assert not (tmp_path / "b").exists()


def _hub_folder(checkpoint, folder):
    """A folder as `save_pretrained` writes it for llava-hf checkpoints."""
    checkpoint.model.save_pretrained(folder)
    tokenizer = checkpoint.assets["tokenizer"]
    tokenizer.chat_template = checkpoint.assets["chat_template"]
    tokenizer.save_pretrained(folder)
    checkpoint.assets["image_processor"].save_pretrained(folder)
    return folder


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_hub_shaped_folder_exports(which, llava_checkpoint, llava_qwen2_checkpoint, llava_bundle, llava_qwen2_bundle,
                                   tmp_path):
    checkpoint, preset_bundle = {"llama": (llava_checkpoint, llava_bundle),
                                 "qwen2": (llava_qwen2_checkpoint, llava_qwen2_bundle)}[which]
    folder = _hub_folder(checkpoint, tmp_path / "ckpt")
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    ours, preset = json.loads((bundle / "manifest.json").read_text()), json.loads((preset_bundle / "manifest.json").read_text())
    assert ours["chat"] == preset["chat"] and ours["llm"] == preset["llm"]
    assert ours["source"]["config_sha256"] == preset["source"]["config_sha256"]
    question = "what is unusual about this image?"
    assert load(bundle).answer(None, question, max_new_tokens=6) == load(preset_bundle).answer(None, question,
                                                                                                max_new_tokens=6)


def test_folder_without_a_chat_template_is_refused(llava_checkpoint, tmp_path):
    folder = _hub_folder(llava_checkpoint, tmp_path / "ckpt")
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has no chat template"):
        load_checkpoint(str(folder))


def test_folder_without_its_tokenizer_is_refused(llava_checkpoint, tmp_path):
    folder = _hub_folder(llava_checkpoint, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match="lacks tokenizer.json or tokenizer.model or vocab.json"):
        load_checkpoint(str(folder))


def test_external_data_is_one_listed_file_and_quantize_drops_it(llava_bundle, tmp_path, photos):
    """What a part over 2 GB does (LLaVA-7B's llm), forced on the tiny model: the weights go to one
    `<part>.onnx.data` listed and hashed in the manifest, and a quantized bundle does not carry the
    FP32 data of the parts it quantized."""
    from edgevfm.quantize.api import quantize

    bundle = export("random:llava-tiny", tmp_path / "external", show_progress=False, external_data=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parts"]["llm"]["data"] == ["llm.onnx.data"] and "llm.onnx.data" in manifest["files"]
    assert sorted(p.name for p in bundle.iterdir() if p.name.endswith(".data")) == [
        "embed.onnx.data", "llm.onnx.data", "vision.onnx.data"]
    question = "What is unusual about this image?"
    assert load(bundle).answer(photos[1], question, max_new_tokens=8) == load(llava_bundle).answer(
        photos[1], question, max_new_tokens=8)
    int4 = quantize(bundle, "llava-int4", tmp_path / "int4", show_progress=False)
    files = json.loads((int4 / "manifest.json").read_text())["files"]
    assert "llm.onnx.data" not in files and "embed.onnx.data" not in files and "vision.onnx.data" in files
    assert isinstance(load(int4).answer(photos[1], question, max_new_tokens=4), str)


def test_a_text_model_the_builder_cannot_run_exports_on_the_plain_graph(llava_checkpoint, tmp_path, capsys):
    """Head size 8: ONNX Runtime's GroupQueryAttention refuses it at run time. Without a flag the
    export takes the plain graph, says so on the console and in the manifest, and the bundle
    answers; asked for explicitly, the builder graph is refused before any work."""
    from transformers import LlavaForConditionalGeneration

    from edgevfm.export.errors import ExportError

    config = copy.deepcopy(llava_checkpoint.model.config)
    config.text_config.num_attention_heads, config.text_config.num_key_value_heads = 8, 4
    config.text_config.head_dim = 8  # 64 wide / 8 heads
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    folder = _hub_folder(llava_checkpoint, tmp_path / "ckpt")
    model.save_pretrained(folder)
    bundle = export(str(folder), tmp_path / "bundle", show_progress=False)
    assert "the llm part takes the plain graph: ONNX Runtime's GroupQueryAttention" in capsys.readouterr().err
    options = json.loads((bundle / "manifest.json").read_text())["export"]["options"]
    assert options["llm_graph"] == "plain" and "multiple of 16, found 8" in options["llm_graph_why"]
    import onnx

    assert "GroupQueryAttention" not in {n.op_type for n in onnx.load(str(bundle / "llm.onnx")).graph.node}
    assert isinstance(load(bundle).answer(np.zeros((32, 32, 3), np.uint8), "What is it?", max_new_tokens=3), str)
    with pytest.raises(ExportError, match="multiple of 16, found 8"):
        export(str(folder), tmp_path / "builder", llm_graph="builder", show_progress=False)
    assert not (tmp_path / "builder").exists()

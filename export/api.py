"""``export``: checkpoint -> validated FP32 bundle."""

from __future__ import annotations

from pathlib import Path

from edgevfm.runtime.bundle import write_manifest
from edgevfm.runtime.output import check_out_dir, staged_bundle

from edgevfm.runtime.errors import UsageError

from .checkpoint import load_checkpoint
from .onnx_export import DEFAULT_OPSET, check_opset, export_part
from edgevfm.runtime.progress import progress
from edgevfm.runtime.versions import library_versions
from .spec import LLM_GRAPHS


def tool_versions() -> dict[str, str]:
    """What a bundle records it was made with."""
    return library_versions(("edgevfm", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai",
                             "tokenizers", "numpy"), python=True)


def export(model: str, out: str | Path, family: str | None = None, opset: int = DEFAULT_OPSET,
           force: bool = False, revision: str | None = None, show_progress: bool = True,
           external_data: bool | None = None, llm_graph: str | None = None) -> Path:
    """Export ``model`` (hub id, folder or ``random:<preset>``) to an FP32 bundle at ``out``.

    Every part is validated against PyTorch before the bundle is written; nothing is left at
    ``out`` if anything fails. ``force`` replaces an existing bundle at ``out``, never anything else
    (see :func:`edgevfm.runtime.output.check_out_dir`). A part over 2 GB keeps its weights in
    ``<part>.onnx.data`` (``external_data=True``: every part does), listed as the part's ``data``.
    ``llm_graph`` chooses a language-model part's graph: "builder" (onnxruntime-genai's model
    builder: fused attention, shared KV buffer; the faster) or "plain" (torch's exporter); None
    is the family's default (``DEFAULT_EXPORT_OPTIONS``, or plain where the builder cannot write
    the text model: BLIP-2's OPT). The manifest records only choices that were made.
    """
    out = Path(out)
    check_opset(opset)
    if llm_graph is not None and llm_graph not in LLM_GRAPHS:
        raise UsageError(f"llm_graph must be one of {', '.join(LLM_GRAPHS)}, found {llm_graph!r}")
    inputs = [model] if Path(model).exists() else []  # a checkpoint folder is never overwritten
    check_out_dir(out, force, inputs)
    checkpoint = load_checkpoint(model, family=family, revision=revision)
    if llm_graph is not None:
        checkpoint.options["llm_graph"] = llm_graph
    spec = checkpoint.spec
    parts = spec.parts(checkpoint)
    with staged_bundle(out, force=force, inputs=inputs) as stage:
        manifest_parts, validation = {}, {}
        for part in progress(parts, desc=f"export {spec.name}", enabled=show_progress):
            file = f"{part.name}.onnx"
            validation[part.name], data = export_part(checkpoint.model, part, stage / file, opset=opset,
                                                      external_data=external_data)
            manifest_parts[part.name] = {
                "file": file, "data": data, "backend": "onnxruntime", "precision": "fp32",
                "inputs": [t.as_manifest() for t in part.inputs],
                "outputs": [t.as_manifest() for t in part.outputs],
            }
        spec.write_assets(checkpoint, stage)
        write_manifest(stage, {
            "family": spec.name,
            "source": checkpoint.source,
            "parts": manifest_parts,
            **spec.manifest_sections(checkpoint),
            "recipe": None,
            "calibration": None,
            "export": {"opset": opset, "options": checkpoint.options, "validation": validation},
            "tools": tool_versions(),
        })
    return out

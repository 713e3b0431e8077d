"""The generic ONNX exporter: trace one part with torch's exporter, then prove the graph
reproduces PyTorch on inputs whose dynamic sizes differ from the trace example."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from edgevfm.runtime.backends import OrtBackend
from edgevfm.export.errors import ExportError, NonFiniteOutputError
from edgevfm.runtime.errors import UsageError

from .spec import PartSpec

DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention and friends need 14
MAX_OPSET = 20  # the newest the TorchScript exporter (dynamo=False) writes


def check_opset(opset: int) -> None:
    """Raise ``UsageError`` for an opset the exporter cannot write, before any work runs."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset {opset!r} is out of range: expected an integer from {MIN_OPSET} (attention needs "
                         f"it) to {MAX_OPSET} (the newest torch's exporter writes); the default is {DEFAULT_OPSET}")


def export_part(model, part: PartSpec, path: Path, opset: int = DEFAULT_OPSET,
                external_data: bool | None = None) -> tuple[dict, list[str]]:
    """Export ``part`` of ``model`` to ``path`` and validate it; returns the validation summary and
    the external-data files written beside it (weights over 2 GB, or all with ``external_data``)."""
    from .external import consolidate

    check_opset(opset)
    wrapper = part.wrapper(model).eval()  # the TorchScript exporter restores the training flag: eval first
    if part.build is not None:
        part.build(model, path)
        return validate_part(wrapper, part, path), consolidate(path, external_data)
    example = part.example(part.trace_batch, 0)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(example.values()),
            str(path),
            input_names=[t.name for t in part.inputs],
            output_names=[t.name for t in part.outputs],
            dynamic_axes=part.dynamic_axes(),
            opset_version=opset,
            dynamo=False,
        )
    data = consolidate(path, external_data)
    return validate_part(wrapper.eval(), part, path), data


def validate_part(wrapper, part: PartSpec, path: Path) -> dict:
    """Run the ONNX graph and the PyTorch module on each validation variant and compare."""
    backend = OrtBackend(path)
    summaries = [_compare(wrapper, part, backend, variant) for variant in part.check_variants]
    return summaries[0] if len(summaries) == 1 else {"variants": summaries}


def _compare(wrapper, part: PartSpec, backend: OrtBackend, variant: int) -> dict:
    feeds = part.example(part.check_batch, variant)
    with torch.no_grad():
        expected = wrapper(*feeds.values())
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = backend.run({k: v.numpy() for k, v in feeds.items()})
    summary = {"inputs": {k: list(v.shape) for k, v in feeds.items()}, "atol": part.atol, "rtol": part.rtol}
    for spec, ref in zip(part.outputs, expected):
        ref = ref.numpy()
        out = got[spec.name]
        if not np.isfinite(out).all():
            raise NonFiniteOutputError(f"part {part.name!r}: output {spec.name!r} of the ONNX graph holds NaN or inf")
        if ref.size and np.abs(ref).max() < 10 * part.atol:
            raise ExportError(
                f"part {part.name!r}: PyTorch's {spec.name!r} is ~0 everywhere (max |x| {np.abs(ref).max():.2g}), "
                f"so parity at atol {part.atol} would prove nothing: check the weights' initialisation"
            )
        if out.shape != ref.shape:
            raise ExportError(f"part {part.name!r}: output {spec.name!r} has shape {out.shape}, PyTorch gives {ref.shape}")
        diff = np.abs(out - ref)
        limit = part.atol + part.rtol * np.abs(ref)
        if (diff > limit).any():
            raise ExportError(
                f"part {part.name!r}: output {spec.name!r} differs from PyTorch by up to {diff.max():.3g} "
                f"(allowed {part.atol} + {part.rtol}*|ref|) at inputs {summary['inputs']}"
            )
        summary[spec.name] = {"max_abs_diff": float(diff.max()) if diff.size else 0.0}
    return summary

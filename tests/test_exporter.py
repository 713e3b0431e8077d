"""The generic exporter's validation: a graph that disagrees with PyTorch, or produces NaN, is
refused with its own error."""

from __future__ import annotations

import pytest
import torch

from edgevfm.export.onnx_export import export_part
from edgevfm.export.spec import PartSpec, TensorSpec
from edgevfm.export.errors import ExportError, NonFiniteOutputError
from edgevfm.runtime.errors import UsageError


class Log(torch.nn.Module):
    def forward(self, x):
        return torch.log(x - 10.0)  # inputs in [0, 1): NaN everywhere


class BatchBaked(torch.nn.Module):
    def forward(self, x):
        return x * float(x.shape[0])  # tracing bakes the trace batch (2) in as a constant


def _part(module):
    return PartSpec("toy", lambda _: module, [TensorSpec("x", "float32", ("batch", 4))],
                    [TensorSpec("y", "float32", ("batch", 4))],
                    lambda batch, variant: {"x": torch.rand(batch, 4)})


def test_nan_output_is_its_own_error(tmp_path):
    with pytest.raises(NonFiniteOutputError, match="'y' of the ONNX graph holds NaN"):
        export_part(None, _part(Log()), tmp_path / "toy.onnx")


def test_graph_that_only_matches_at_the_trace_shape_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"differs from PyTorch .* at inputs \{'x': \[3, 4\]\}"):
        export_part(None, _part(BatchBaked()), tmp_path / "toy.onnx")


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(UsageError, match="opset 11 is out of range: expected an integer from 14"):
        export_part(None, _part(Log()), tmp_path / "toy.onnx", opset=11)


class Vanishing(torch.nn.Module):
    def forward(self, x):
        return x * 1e-9  # what SAM's default 1e-10 initialisation does to its outputs


def test_degenerate_reference_is_refused(tmp_path):
    with pytest.raises(ExportError, match="~0 everywhere .* would prove nothing"):
        export_part(None, _part(Vanishing()), tmp_path / "toy.onnx")

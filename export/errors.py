"""The export layer's errors (see :mod:`edgevfm.runtime.errors` for the base and the exit codes)."""

from __future__ import annotations

from edgevfm.runtime.errors import EXIT_INPUT, EdgeVfmError


class CheckpointError(EdgeVfmError, ValueError):
    """A checkpoint that is missing, corrupt or of an unsupported architecture."""

    exit_code = EXIT_INPUT


class ExportError(EdgeVfmError, RuntimeError):
    """An exported graph that does not reproduce the PyTorch model."""


class NonFiniteOutputError(ExportError):
    """NaN or infinity in an output: its own error, since no tolerance makes it right."""

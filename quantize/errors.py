"""The quantize layer's errors (see :mod:`edgevfm.runtime.errors` for the base and the exit codes)."""

from __future__ import annotations

from edgevfm.runtime.errors import EXIT_INPUT, EdgeVfmError


class CalibrationError(EdgeVfmError, ValueError):
    """Calibration data that cannot calibrate: none found, unreadable, ..."""

    exit_code = EXIT_INPUT


class QuantizeError(EdgeVfmError, RuntimeError):
    """A recipe that could not produce a runnable bundle."""

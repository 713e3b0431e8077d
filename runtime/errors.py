"""Typed errors. Each says what was expected, what was found and how to fix it.

Every error subclasses ``EdgeVfmError`` and a builtin (``ValueError``, ``RuntimeError``, ...), so
callers can catch either. Validation collects every problem and raises once.
"""

from __future__ import annotations


class EdgeVfmError(Exception):
    """Base class of every error edgevfm raises on purpose."""


class UnknownNameError(EdgeVfmError, ValueError):
    """A family, preset, recipe or backend name that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}: expected one of {', '.join(self.valid) or '(none)'}")


class BundleError(EdgeVfmError, ValueError):
    """A bundle that cannot be trusted: one error listing every problem found."""

    def __init__(self, path, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid bundle {self.path}:\n{lines}")


class BundleExistsError(EdgeVfmError, FileExistsError):
    """The output folder already holds something; refused unless forced."""

    def __init__(self, path):
        self.path = str(path)
        super().__init__(
            f"output folder {self.path} already exists: choose another path, or pass --force "
            "(force=True) to replace it"
        )


class InputError(EdgeVfmError, ValueError):
    """Bad user input to a pipeline: an image that is not an image, an empty label list, ..."""


class StateError(EdgeVfmError, RuntimeError):
    """A call made out of order, e.g. ``predict`` before ``set_image``; the message says the fix."""


class CheckpointError(EdgeVfmError, ValueError):
    """A checkpoint that is missing, corrupt or of an unsupported architecture."""


class ExportError(EdgeVfmError, RuntimeError):
    """An exported graph that does not reproduce the PyTorch model."""


class NonFiniteOutputError(ExportError):
    """NaN or infinity in an output: its own error, since no tolerance makes it right."""


class CalibrationError(EdgeVfmError, ValueError):
    """Calibration data that cannot calibrate: none found, unreadable, ..."""


class QuantizeError(EdgeVfmError, RuntimeError):
    """A recipe that could not produce a runnable bundle."""


class MissingExtraError(EdgeVfmError, ImportError):
    """A subcommand that needs an optional dependency group that is not installed."""

    def __init__(self, extra: str, what: str, cause: BaseException | None = None):
        self.extra = extra
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"{what} needs the [{extra}] extra{detail}: install it with "
            f"pip install 'edgevfm[{extra}]'"
        )

"""Typed errors. Each says what was expected, what was found and how to fix it.

Every error subclasses ``EdgeVfmError`` and a builtin (``ValueError``, ``RuntimeError``, ...), so
callers can catch either. Validation collects every problem and raises once.

The export and quantize layers' own errors (``export/errors.py``, ``quantize/errors.py``) subclass
these, so the command maps every error to its exit code here.

Each class carries the ``edgevfm`` command's exit code for it (see :data:`EXIT_CODES`): 1 the work
failed, 2 a bad command line, 3 bad input (a bundle, checkpoint, image, prompt or output path),
4 an optional extra is missing.
"""

from __future__ import annotations


EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_MISSING_EXTRA, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
EXIT_CODES = {
    0: "success",
    EXIT_FAILED: "the work failed: an export that does not match PyTorch, a recipe that could not quantize",
    EXIT_USAGE: "bad command line: an unknown option, or a value out of range (checked before any work)",
    EXIT_INPUT: "bad input: a bundle, checkpoint, image, prompt or output path that cannot be used",
    EXIT_MISSING_EXTRA: "an optional extra is not installed: the message says which",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): nothing half-written is left",
}


class EdgeVfmError(Exception):
    """Base class of every error edgevfm raises on purpose."""

    exit_code = EXIT_FAILED


class UnknownNameError(EdgeVfmError, ValueError):
    """A family, preset, recipe or backend name that is not registered."""

    exit_code = EXIT_INPUT

    def __init__(self, kind: str, name: str, valid: list[str], which: str = ""):
        self.kind, self.name, self.valid, self.which = kind, name, sorted(valid), which
        super().__init__(f"unknown {kind} {name!r}: expected one of {', '.join(self.valid) or '(none)'}{which}")

    def __reduce__(self):  # errors cross processes (Ray workers, the bench's worker) by pickle
        return type(self), (self.kind, self.name, self.valid, self.which)


class BundleError(EdgeVfmError, ValueError):
    """A bundle that cannot be trusted: one error listing every problem found."""

    exit_code = EXIT_INPUT

    def __init__(self, path, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid bundle {self.path}:\n{lines}")

    def __reduce__(self):
        return type(self), (self.path, self.problems)


class BundleExistsError(EdgeVfmError, FileExistsError):
    """The output folder already holds something; refused unless forced."""

    exit_code = EXIT_INPUT

    def __init__(self, path):
        self.path = str(path)
        super().__init__(
            f"output folder {self.path} already exists: choose another path, or pass --force "
            "(force=True) to replace it"
        )

    def __reduce__(self):
        return type(self), (self.path,)


class OutputError(EdgeVfmError, ValueError):
    """An output path edgevfm refuses to write, even with --force: a file, a folder that is not a
    bundle, the input itself or a folder holding it."""

    exit_code = EXIT_INPUT


class InputError(EdgeVfmError, ValueError):
    """Bad user input to a pipeline: an image that is not an image, an empty label list, ..."""

    exit_code = EXIT_INPUT


class UsageError(InputError):
    """A command-line or API argument out of range (a thread count, an opset, a block size), found
    before any work runs."""

    exit_code = EXIT_USAGE


class StateError(EdgeVfmError, RuntimeError):
    """A call made out of order, e.g. ``predict`` before ``set_image``; the message says the fix."""

    exit_code = EXIT_INPUT


class MissingExtraError(EdgeVfmError, ImportError):
    """A subcommand that needs an optional dependency group that is not installed."""

    exit_code = EXIT_MISSING_EXTRA

    def __init__(self, extra: str, what: str, cause: BaseException | None = None, install: str | None = None):
        """``install``: what to install, where no pip extra provides it (TensorRT on a Jetson)."""
        self.extra = extra
        self._given = (extra, what, str(cause) if cause else None, install)
        detail = f" ({cause})" if cause else ""
        if install:  # not a pip extra of edgevfm: say what it is and how to get it
            super().__init__(f"{what} needs {extra}{detail}: {install}")
        else:
            super().__init__(f"{what} needs the [{extra}] extra{detail}: install it with pip install 'edgevfm[{extra}]'")

    def __reduce__(self):
        return type(self), self._given


class SaturationWarning(UserWarning):
    """An INT8 part made with full-range 8-bit weights runs on a CPU whose 8-bit dot products
    saturate (x86 without VNNI): its accuracy is below what was measured where it was made."""

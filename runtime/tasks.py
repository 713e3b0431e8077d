"""``edgevfm run BUNDLE TASK ...``: each family registers the tasks its pipeline answers, so the
CLI stays generic. A task adds its arguments to an argparse parser and runs on a loaded pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .registry import Registry

TASKS: Registry["Task"] = Registry("task")


@dataclass(frozen=True)
class Task:
    name: str
    families: tuple[str, ...]  # the families whose pipelines answer it (the same arguments and call)
    help: str
    add_arguments: Callable  # (argparse.ArgumentParser) -> None
    run: Callable  # (pipeline, argparse.Namespace) -> None


def register_task(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def tasks_of(family: str) -> list[str]:
    return [name for name, task in TASKS.items() if family in task.families]


# -- argument types: argparse checks each value before any work runs (a bad one exits 2) ---------
def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {value}")
    return value


def finite_float(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def decoding_arguments(parser, max_new_tokens: int) -> None:
    """``--max-new-tokens`` and ``--beams``, as every generating task takes them (the engine's
    ``max_new_tokens`` and ``num_beams``); read them back with :func:`decoding_options`."""
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help=f"stop after this many tokens (default: {max_new_tokens}, or fewer where the model's "
                        "context ends first; a value that does not fit is an error)")
    parser.add_argument("--beams", type=positive_int, default=1, help="beam search with this many beams (default 1: "
                        "greedy or sampled); the answer comes at once")


def decoding_options(args) -> dict:
    """The generation settings ``decoding_arguments`` read: only those given, so that the
    pipeline's defaults (which fit the context) hold for the rest."""
    return {"num_beams": args.beams} | ({} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens})


def nonempty_text(text: str) -> str:
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty text")
    return text


def existing_folder(text: str):
    import argparse
    from pathlib import Path

    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return Path(text)


def new_folder(text: str):
    """A folder to write into: missing (it is created) or a folder, never a file."""
    import argparse
    from pathlib import Path

    path = Path(text)
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder: {str(blocker)!r} is a file")
    return path


def png_file(text: str):
    """A PNG file to write: ends in .png, and its folder can be created."""
    import argparse
    from pathlib import Path

    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a .png file name, found {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a .png file name")
    new_folder(str(path.parent))
    return path

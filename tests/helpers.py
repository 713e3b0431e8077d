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

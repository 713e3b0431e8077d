"""TensorRT-format recipes (issue 23, first part): graphs TensorRT's ONNX parser takes, read back
and checked here, and run on ONNX Runtime's CPU provider as their simulation. Accuracy floors for
trt-int8 are not claimed yet: signed symmetric activations lose more than int8-static on random
weights, and x86 CPUs without VNNI saturate its full-range arithmetic (python -m
edgevfm.benchmarks.isa measures both)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgevfm.quantize.api import quantize
from edgevfm.quantize.recipes import recipes_for
from edgevfm.quantize.tensorrt import NOT_FOR_TENSORRT
from edgevfm.runtime import load


@pytest.fixture(scope="module")
def trt_bundles(clip_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    return {r: quantize(clip_bundle, r, out / r, samples=4, show_progress=False) for r in ("trt-int8", "trt-fp16")}


@pytest.mark.parametrize("recipe", ["trt-int8", "trt-fp16"])
@pytest.mark.parametrize("part", ["vision", "text"])
def test_the_graphs_hold_only_what_tensorrt_parses(trt_bundles, recipe, part):
    model = onnx.load(str(trt_bundles[recipe] / f"{part}.onnx"))
    ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
    assert {d for d, _ in ops} == {"ai.onnx"}, ops  # no ONNX Runtime contrib operator
    assert not {op for _, op in ops} & set(NOT_FOR_TENSORRT)
    assert all(o.domain not in ("", "ai.onnx") or 9 <= o.version <= 20 for o in model.opset_import)


@pytest.mark.parametrize("part", ["vision", "text"])
def test_int8_is_signed_symmetric_with_weights_per_output_channel(trt_bundles, part):
    model = onnx.load(str(trt_bundles["trt-int8"] / f"{part}.onnx"))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pairs = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(pairs) >= 20
    for node in pairs:
        zero = constants[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), node.name
    produced_by = {o: n for n in model.graph.node for o in n.output}
    weighted = 0
    for node in (n for n in model.graph.node if n.op_type == "MatMul"):
        source = produced_by.get(node.input[1])
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in constants:
            weight, scale = constants[source.input[0]], constants[source.input[1]]
            assert weight.dtype == np.int8 and scale.shape == (weight.shape[1],), node.name  # [K, N]: per N
            weighted += 1
    assert weighted >= 8  # every projection of two layers has its weight quantized


def test_the_bundles_say_what_they_are_and_run_on_the_cpu(trt_bundles, clip_bundle, photos):
    int8 = json.loads((trt_bundles["trt-int8"] / "manifest.json").read_text())
    assert int8["recipe"]["parts"]["vision"]["target"] == "tensorrt"
    assert int8["parts"]["vision"]["int8_activations"] == "full-range"  # S8S8 saturates on x86 without VNNI
    fp16 = json.loads((trt_bundles["trt-fp16"] / "manifest.json").read_text())
    assert fp16["recipe"]["parts"]["text"]["strongly_typed"] is True
    reference = load(clip_bundle, threads=1).embed_images(photos[:3])
    for recipe, floor in (("trt-fp16", 0.9999), ("trt-int8", 0.95)):
        found = load(trt_bundles[recipe], threads=1).embed_images(photos[:3])
        assert np.all((reference * found).sum(1) > floor), recipe


def test_auto_and_the_demo_leave_them_to_the_device():
    assert not {"trt-int8", "trt-fp16"} & set(recipes_for("clip"))


def test_a_tensorrt_format_bundle_runs_without_torch(trt_bundles):
    """The runtime opens the TensorRT-format graphs (their CPU simulation) with torch made
    unimportable, as on a Jetson without PyTorch."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        for name in ('torch', 'transformers', 'tensorrt'):
            sys.modules[name] = None
        import numpy as np
        from edgevfm.runtime import load
        for path in {[str(p) for p in trt_bundles.values()]!r}:
            found = load(path, threads=1).embed_texts(['a cat', 'a dog'])
            assert found.shape[0] == 2 and np.isfinite(found).all()
        assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
        print('ok')
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_bundle_that_is_not_fp32_is_refused(trt_bundles, tmp_path):
    from edgevfm.runtime.errors import BundleError

    with pytest.raises(BundleError, match="quantize starts from an FP32 bundle"):
        quantize(trt_bundles["trt-fp16"], "trt-int8", tmp_path / "again", samples=2, show_progress=False)
    assert not (tmp_path / "again").exists()

"""TensorRT-format recipes for every family: graphs TensorRT's ONNX parser takes (read back here:
standard operators only, signed zero points of 0, per-channel and blocked scales, opsets), passing
``edgevfm check`` for TensorRT 10.3 and 10.15, and their numerics simulated on ONNX Runtime's CPU
within the floors the family's INT8 recipes are held to (tests/test_quantize.py: 0.98 mean cosine
for int8-static on random:clip-tiny). python -m edgevfm.benchmarks.tensorrt measures them at size
(benchmarks/reports/tensorrt)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgevfm.quantize.api import quantize
from edgevfm.quantize.recipes import RECIPES, recipes_for
from edgevfm.quantize.tensorrt import NOT_FOR_TENSORRT
from edgevfm.runtime import InputError, load
from edgevfm.runtime.cli import main
from edgevfm.runtime.tensorrt import SIMULATE

from helpers import TRT_MADE as MADE

CASES = [(family, recipe) for family, recipes in MADE.items() for recipe in recipes]


def graphs(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {name: onnx.load(str(bundle / part["file"])) for name, part in manifest["parts"].items()}


@pytest.mark.parametrize("family,recipe", CASES, ids=[f"{f.split('_')[0]}-{r}" for f, r in CASES])
def test_every_graph_holds_only_what_tensorrt_parses(trt_bundles, family, recipe):
    bundle = trt_bundles[family, recipe]
    for name, model in graphs(bundle).items():
        ops = {(n.domain or "ai.onnx", n.op_type) for n in model.graph.node}
        assert {d for d, _ in ops} == {"ai.onnx"}, (name, ops)  # no ONNX Runtime contrib operator
        assert not {op for _, op in ops} & set(NOT_FOR_TENSORRT), name
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in (n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
            if len(node.input) > 2 and node.input[2]:
                zero = constants[node.input[2]]
                assert zero.dtype == np.int8 and not zero.any(), (name, node.name)
            assert (constants[node.input[1]] > 0).all(), (name, node.name)  # TensorRT takes positive scales only
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        # 4-bit blocks need opset 21, past TensorRT 10.3's documented 20 (a warning of the check); 10.15 documents 24
        assert 9 <= opset <= (24 if "int4" in recipe and name in ("llm", "text_decoder") else 20), (name, opset)
        assert not ("int4" in recipe and name in ("llm", "text_decoder")) or opset == 21, (name, opset)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {p["backend"] for p in manifest["parts"].values()} == {"tensorrt"}
    assert all(t["errors"] == 0 for t in manifest["recipe"]["tensorrt_check"]["targets"].values())
    assert main(["check", str(bundle), "--target", "tensorrt-10.3"]) == 0
    assert main(["check", str(bundle), "--target", "tensorrt-10.15"]) == 0


@pytest.mark.parametrize("family,part", [("clip_bundle", "vision"), ("clip_bundle", "text"), ("sam_bundle", "image_encoder")])
def test_int8_is_signed_symmetric_with_weights_per_output_channel(trt_bundles, family, part):
    recipe = "sam-trt-int8" if family == "sam_bundle" else "trt-int8"
    model = graphs(trt_bundles[family, recipe])[part]
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    weighted = 0
    for node in (n for n in model.graph.node if n.op_type in ("MatMul", "Conv", "Gemm")):
        source = produced_by.get(node.input[1])
        if source is None or source.op_type != "DequantizeLinear" or source.input[0] not in constants:
            continue
        weight, scale = constants[source.input[0]], constants[source.input[1]]
        axis = {"MatMul": 1, "Conv": 0, "Gemm": 0}[node.op_type]  # MatMul [K, N], Conv [out, in, kh, kw]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in source.attribute}
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[axis],), node.name
        assert attrs.get("axis", 1) == axis, node.name
        inputs = produced_by.get(node.input[0])
        assert inputs is not None and inputs.op_type == "DequantizeLinear", node.name  # activations quantized too
        weighted += 1
    assert weighted >= 4


@pytest.mark.parametrize("family,recipe", [("blip2_bundle", "blip2-trt-int4"), ("llava_plain_bundle", "llava-trt-int4"),
                                           ("llava_plain_bundle", "llava-trt-int8")])
def test_llm_weights_are_standard_weight_only_dequantize_before_plain_matmul(trt_bundles, family, recipe):
    """Every LLM MatMul weight goes through a DequantizeLinear without a zero point: 4-bit blocks of
    32 along K, or 8 bits per output channel where int4-mixed keeps 8 (the LM head, and every layer
    of a 2-layer tiny model, whose layers are all first or last); trt-int8-weights: 8 bits everywhere,
    at the export's opset."""
    model = graphs(trt_bundles[family, recipe])["llm"]
    constants = {t.name: t for t in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in (n for n in model.graph.node if n.op_type == "MatMul"):
        source = produced_by.get(node.input[1])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in source.attribute}
        weight, scale = constants[source.input[0]], numpy_helper.to_array(constants[source.input[1]])
        assert len(source.input) == 2 and (scale > 0).all(), node.name  # no zero point, positive scales
        if weight.data_type == onnx.TensorProto.INT4:
            assert attrs == {"axis": 0, "block_size": 32} and scale.shape == (weight.dims[0] // 32, weight.dims[1])
        else:
            assert weight.data_type == onnx.TensorProto.INT8 and attrs == {"axis": 1} and scale.shape == (weight.dims[1],)
        found[node.name] = weight.data_type
    head = next(n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output)
    assert found[head] == onnx.TensorProto.INT8 and len(found) >= 8
    if recipe.endswith("int8"):
        assert set(found.values()) == {onnx.TensorProto.INT8}
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21
    embed = graphs(trt_bundles[family, recipe])["embed"]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in embed.graph.initializer)  # embeddings: trt-fp16


@pytest.mark.parametrize("block_size", [32, None], ids=["int4-blocks", "int8-per-channel"])
def test_a_dequantized_weight_computes_what_its_rounded_weight_does(block_size, tmp_path):
    """The 4-bit and 8-bit weight-only forms trt-int4 writes, run as the simulation runs them (Q/DQ
    unfused), equal the float MatMul on the weight rounded to their grid (amax / 7 or amax / 127
    per block or channel): what an engine computes from them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgevfm.quantize.tensorrt import dequantized_matmul

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 24)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="layers.3/mlp/up_proj/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])], [numpy_helper.from_array(weight, "w")]),
        opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    node = model.graph.node[0]
    nodes = dequantized_matmul(model, node, model.graph.initializer[0], block_size)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    x = rng.normal(size=(2, 64)).astype(np.float32)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # as runtime/tensorrt.py's simulation
    found = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    if block_size:
        blocks = weight.reshape(2, 32, 24)
        scale = np.abs(blocks).max(1, keepdims=True) / 7
        rounded = (np.clip(np.rint(blocks / scale), -8, 7) * scale).reshape(64, 24)
    else:
        scale = np.abs(weight).max(0) / 127
        rounded = np.clip(np.rint(weight / scale), -127, 127) * scale
    np.testing.assert_allclose(found, x @ rounded, rtol=1e-4, atol=1e-4)
    assert not np.allclose(found, x @ weight, rtol=1e-4, atol=1e-4)  # it did round


def test_the_cpu_simulation_keeps_what_an_engine_computes(trt_bundles, clip_bundle, photos):
    """Q/DQ fusion into ONNX Runtime's integer kernels is off in the simulation (exact 8-bit products
    summed in 32 bits, no saturation on x86 without VNNI), and it stays within int8-static's floor."""
    pipeline = load(trt_bundles["clip_bundle", "trt-int8"], providers=SIMULATE, threads=1)
    session = pipeline.parts["vision"]._inner.session
    assert session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    assert all(backend.simulated for backend in pipeline.parts.values())
    reference = load(clip_bundle, threads=1)
    texts = ["a photo of a cat", "an astronaut", "a cup of coffee", "gravel on the ground"]
    for recipe, floor in (("trt-int8", 0.98), ("trt-fp16", 0.9999)):
        found = load(trt_bundles["clip_bundle", recipe], providers=SIMULATE, threads=1)
        for ref, got in ((reference.embed_images(photos), found.embed_images(photos)),
                         (reference.embed_texts(texts), found.embed_texts(texts))):
            assert (ref * got).sum(1).mean() >= floor, recipe


def test_sam_keeps_its_decoder_in_float_and_its_masks_close(trt_bundles, sam_bundle, photos):
    manifest = json.loads((trt_bundles["sam_bundle", "sam-trt-int8"] / "manifest.json").read_text())
    assert {n: p["precision"] for n, p in manifest["parts"].items()} == {"image_encoder": "int8", "prompt_decoder": "fp32"}
    reference, found = load(sam_bundle, threads=1), load(trt_bundles["sam_bundle", "sam-trt-int8"], providers=SIMULATE,
                                                        threads=1)
    ious = []
    for image in photos[:3]:
        reference.set_image(image)
        found.set_image(image)
        h, w = np.asarray(image).shape[:2]
        for point in ([w / 3, h / 3], [w / 2, h / 2]):
            a, b = reference.predict(points=[point], labels=[1]).masks, found.predict(points=[point], labels=[1]).masks
            union = (a | b).sum((-1, -2))
            ious.append(np.mean(np.where(union > 0, (a & b).sum((-1, -2)) / np.maximum(union, 1), 1.0)))
    assert np.mean(ious) >= 0.9  # measured 0.97 (benchmarks/reports/tensorrt has the bench's figures)


def test_language_model_answers_like_fp32(trt_bundles, llava_plain_bundle, photos):
    """FP16 gives FP32's greedy answer; 4 bits its first token (a random tiny model's top-1 margins are
    ~1e-4, so later tokens may part: the bench's next-token agreement measures them)."""
    fp32 = load(llava_plain_bundle, threads=1)
    for recipe, tokens in (("trt-fp16", 6), ("llava-trt-int4", 1)):
        found = load(trt_bundles["llava_plain_bundle", recipe], providers=SIMULATE, threads=1)
        expected = fp32.answer(photos[0], "What is this?", max_new_tokens=tokens)
        assert found.answer(photos[0], "What is this?", max_new_tokens=tokens) == expected, recipe


def test_the_builder_graph_is_refused_before_anything_is_written(llava_bundle, tmp_path):
    with pytest.raises(InputError, match="TensorRT cannot parse .*GroupQueryAttention.*--llm-graph plain"):
        quantize(llava_bundle, "trt-fp16", tmp_path / "trt", show_progress=False)
    assert not (tmp_path / "trt").exists() and not list(tmp_path.iterdir())


def test_auto_leaves_them_to_the_device_and_each_family_names_its_own():
    from edgevfm.benchmarks.families import BENCH

    for family in ("clip", "sam", "blip", "blip2", "llava"):
        offered = set(recipes_for(family))
        assert not {r for r in offered if "trt" in r}, family
        assert set(BENCH.get(family).tensorrt_recipes) <= set(RECIPES.names())


def test_the_bench_labels_simulated_rows(trt_bundles, clip_bundle, tmp_path):
    from edgevfm.benchmarks.api import bench
    from edgevfm.runtime.tensorrt import SIMULATED

    results = bench([clip_bundle, trt_bundles["clip_bundle", "trt-int8"]], "random:clip-tiny", tmp_path / "report",
                    runs=1, batch=2, show_progress=False)
    row = next(r for r in results["rows"] if r.get("recipe") == "trt-int8")
    assert row["simulated"] == SIMULATED and SIMULATED in row["name"]
    assert row["accuracy"]["image_cosine_mean"] >= 0.98
    assert SIMULATED in (tmp_path / "report" / "report.md").read_text()
    assert "simulated" not in next(r for r in results["rows"] if r.get("recipe") is None and r["kind"] == "bundle")


def test_a_bundle_that_is_not_fp32_is_refused(trt_bundles, tmp_path):
    from edgevfm.runtime.errors import BundleError

    with pytest.raises(BundleError, match="quantize starts from an FP32 bundle"):
        quantize(trt_bundles["clip_bundle", "trt-fp16"], "trt-int8", tmp_path / "again", samples=2, show_progress=False)
    assert not (tmp_path / "again").exists()

"""`edgevfm check --target tensorrt`: one planted graph per kind of finding it claims, each found with
the node named, and the same graph without the fault found clean (so no rule fires on everything)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevfm.quantize.check import check_model, tables, targets
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import UsageError

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def graph(nodes, inputs, outputs, initializers=(), opset=17, extra_domains=()):
    model = helper.make_model(
        helper.make_graph(nodes, "planted", inputs, outputs, initializer=list(initializers)),
        opset_imports=[helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_domains]])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def tensor(name, elem=F, shape=(2, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def const(name, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def kinds(model, target="tensorrt-10.3", severity=None):
    return sorted({(f.kind, f.node) for f in check_model(model, target) if severity in (None, f.severity)})


def qdq_graph(zero_point=None, scale=(0.1,), scale_input=False, axis=None, weight_shape=(4, 3)):
    """x -> QuantizeLinear/DequantizeLinear -> MatMul(weight)."""
    inputs = [tensor("x", shape=(2, 4))] + ([tensor("s", shape=())] if scale_input else [])
    inits = [const("w", np.ones(weight_shape))] + ([] if scale_input else [const("s", scale)])
    names = ["x", "s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(np.asarray(zero_point), "z"))
        names.append("z")
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", names, ["q"], name="quant", **attrs),
             helper.make_node("DequantizeLinear", ["q", *names[1:]], ["dq"], name="dequant", **attrs),
             helper.make_node("MatMul", ["dq", "w"], ["y"], name="matmul")]
    return graph(nodes, inputs, [tensor("y", shape=(2, weight_shape[1]))], inits)


def test_a_clean_quantized_graph_has_no_finding():
    assert kinds(qdq_graph(zero_point=np.int8(0))) == []
    assert kinds(qdq_graph()) == []


def test_opset_older_than_any_tensorrt_is_an_error_and_newer_than_documented_a_warning():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    old = graph(relu, [tensor("x")], [tensor("y")], opset=6)
    assert kinds(old) == [("opset", "")]
    assert check_model(old, "tensorrt-10.3")[0].severity == "error"
    newer = graph(relu, [tensor("x")], [tensor("y")], opset=21)
    found = check_model(newer, "tensorrt-10.3")
    assert [(f.kind, f.severity) for f in found] == [("opset", "warning")] and "9 to 20" in found[0].why
    assert check_model(newer, "tensorrt-10.15") == []  # 10.15 documents 9 to 24


def test_contrib_operator_is_found_with_its_fix():
    node = helper.make_node("MatMulNBits", ["x", "w"], ["y"], name="nbits", domain="com.microsoft", K=4, N=4, bits=4,
                            block_size=32)
    model = graph([node], [tensor("x")], [tensor("y")], [const("w", np.zeros((4, 1, 16)), np.uint8)],
                  extra_domains=["com.microsoft"])
    [finding] = check_model(model, "tensorrt-10.3")
    assert (finding.kind, finding.node, finding.op) == ("domain", "nbits", "MatMulNBits")
    assert "trt-int4" in finding.fix


def test_unsupported_operator_is_found_with_its_fix():
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dyn")
    model = graph([node], [tensor("x")], [tensor("q", TensorProto.UINT8), tensor("s", shape=()),
                                          tensor("z", TensorProto.UINT8, ())])
    found = [f for f in check_model(model, "tensorrt-10.3") if f.kind == "operator"]
    assert [(f.node, f.severity) for f in found] == [("dyn", "error")] and "trt-int8" in found[0].fix


def test_int64_data_where_tensorrt_takes_only_float_is_a_type_finding():
    nodes = [helper.make_node("CumSum", ["ids", "axis"], ["y"], name="positions")]
    model = graph(nodes, [tensor("ids", I64)], [tensor("y", I64)], [const("axis", 1, np.int64)])
    assert kinds(model) == [("type", "positions")]
    floats = graph(nodes, [tensor("ids")], [tensor("y")], [const("axis", 1, np.int64)])
    assert kinds(floats) == []


@pytest.mark.parametrize("zero", [np.uint8(128), np.int8(3)], ids=["unsigned", "not-zero"])
def test_zero_point_other_than_signed_zero_is_found(zero):
    found = kinds(qdq_graph(zero_point=zero))
    assert found == [("zero-point", "dequant"), ("zero-point", "quant")]


def test_scales_that_are_not_constants_positive_or_one_per_channel_are_found():
    assert ("qdq-scale", "quant") in kinds(qdq_graph(scale_input=True))
    assert kinds(qdq_graph(scale=(-0.1,))) == [("qdq-scale", "dequant"), ("qdq-scale", "quant")]
    wrong_count = kinds(qdq_graph(scale=(0.1, 0.2, 0.3), axis=1))  # x is [2, 4]: 3 scales for 4 channels
    assert wrong_count == [("qdq-scale", "dequant"), ("qdq-scale", "quant")]
    assert kinds(qdq_graph(scale=(0.1, 0.2, 0.3, 0.4), axis=1)) == []


def test_blocked_scales_along_two_axes_are_found():
    weight = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], name="blocks", axis=0, block_size=2),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="matmul")]
    one_axis = graph(nodes, [tensor("x")], [tensor("y")], [weight, const("s", np.ones((2, 4)))], opset=21)
    assert kinds(one_axis, "tensorrt-10.15") == []
    two_axes = graph(nodes, [tensor("x")], [tensor("y")], [weight, const("s", np.ones((2, 2)))], opset=21)
    assert kinds(two_axes, "tensorrt-10.15") == [("qdq-scale", "blocks")]


@pytest.mark.parametrize("attrs", [{"mode": "cubic"}, {"antialias": 1, "mode": "linear"},
                                   {"coordinate_transformation_mode": "tf_crop_and_resize"}])
def test_resize_modes_tensorrt_lacks_are_found(attrs):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upscale", **attrs)
    model = graph([node], [tensor("x", shape=(1, 1, 4, 4))], [tensor("y", shape=(1, 1, 8, 8))],
                  [const("scales", [1, 1, 2, 2])], opset=18)
    assert kinds(model) == [("resize", "upscale")]
    plain = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upscale", mode="linear")
    assert kinds(graph([plain], [tensor("x", shape=(1, 1, 4, 4))], [tensor("y", shape=(1, 1, 8, 8))],
                       [const("scales", [1, 1, 2, 2])], opset=18)) == []


def test_inputs_that_must_be_initializers_are_found_per_version():
    """Pad's axes must be an initializer in TensorRT 10.3 (onnx-tensorrt's table), not in 10.15."""
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="pad")
    model = graph([node], [tensor("x"), tensor("axes", I64, (1,))], [tensor("y", shape=(2, 6))],
                  [const("pads", [1, 1], np.int64)], opset=18)
    assert kinds(model, "tensorrt-10.3") == [("initializer", "pad")]
    assert kinds(model, "tensorrt-10.15") == []
    folded = graph([node], [tensor("x")], [tensor("y", shape=(2, 6))],
                   [const("pads", [1, 1], np.int64), const("axes", [1], np.int64)], opset=18)
    assert kinds(folded, "tensorrt-10.3") == []


def test_a_shape_computed_from_data_is_found_and_one_from_a_shape_is_not():
    """The SAM decoder's known trap: an image size fed as values into the shape of a Resize or Reshape."""
    from_data = [helper.make_node("Cast", ["size"], ["size64"], name="cast", to=I64),
                 helper.make_node("Reshape", ["x", "size64"], ["y"], name="reshape")]
    model = graph(from_data, [tensor("x"), tensor("size", shape=(2,))], [tensor("y", shape=(4, 2))])
    [finding] = check_model(model, "tensorrt-10.3")
    assert (finding.kind, finding.node) == ("shape-tensor", "reshape") and "'size'" in finding.why
    from_shape = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
                  helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    assert kinds(graph(from_shape, [tensor("x")], [tensor("y")])) == []


def test_data_dependent_output_size_is_a_warning():
    node = helper.make_node("NonZero", ["x"], ["y"], name="where")
    found = check_model(graph([node], [tensor("x")], [helper.make_tensor_value_info("y", I64, [2, None])]),
                        "tensorrt-10.3")
    assert [(f.kind, f.node, f.severity) for f in found] == [("data-dependent-shape", "where", "warning")]


def test_the_tables_say_where_they_came_from():
    for name, table in tables().items():
        assert table["source"] and "onnx-tensorrt" in table["source"][0], name
        assert table["opset"][0] == 9 and len(table["operators"]) > 150
    assert targets("tensorrt") == ["tensorrt-10.3", "tensorrt-10.15"]
    with pytest.raises(UsageError, match="unknown target 'tensorrt-9'.*tensorrt-10.3"):
        targets("tensorrt-9")


def test_the_command_exits_1_on_a_refused_bundle_and_says_json(clip_recipe_bundles, capsys):
    assert main(["check", str(clip_recipe_bundles["int8-static"]), "--target", "tensorrt-10.3", "--json"]) == 1
    out = capsys.readouterr()
    findings = json.loads(out.out)
    assert {f["kind"] for f in findings} == {"zero-point"} and all(f["fix"] for f in findings)
    assert "findings TensorRT would refuse" in out.err
    assert main(["check", str(clip_recipe_bundles["int8-static"]), "--target", "tensorrt-9"]) == 2

"""``edgevfm check BUNDLE --target tensorrt[-VERSION]``: will TensorRT's ONNX parser build an engine
from each part? Read against onnx-tensorrt's operator table for that TensorRT (tensorrt-operators.json,
beside this file, with where each table came from), without TensorRT.

Each finding names the part, the node, why TensorRT refuses it and the fix. ``error``: the parser or
builder refuses it; ``warning``: outside what the table documents, or a shape TensorRT must be told
a bound for; verify on the device. What is checked, by ``kind``:
- ``opset``: the model's ONNX opset against the target's range;
- ``domain``: a node of another domain (ONNX Runtime's ``com.microsoft`` contrib operators);
- ``operator``: an operator the table marks unsupported, or does not list;
- ``type``: a node's data input of a type the table does not list for it (INT64 where it matters,
  unsigned or double data);
- ``zero-point``: a Q/DQ zero point other than 0, or unsigned (TensorRT's INT8 is signed, symmetric);
- ``qdq-scale``: a Q/DQ scale that is not a constant, not positive, or whose shape is not a scalar,
  one per channel of its axis, or blocks along one axis;
- ``resize``: a Resize mode, coordinate transformation, nearest mode or aspect policy not supported;
- ``initializer``: an input the table says must be an initializer or a build-time constant;
- ``shape-tensor``: a shape input (Reshape's shape, Resize's sizes, Expand, Tile, ConstantOfShape,
  Range) computed from a graph input's values rather than its shape (the SAM decoder's known trap:
  an image size fed as data into a Resize);
- ``data-dependent-shape``: an output whose size depends on the data (NonZero, Unique, ...).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from edgevfm.runtime.errors import UsageError

from .errors import QuantizeError

TABLES = Path(__file__).with_name("tensorrt-operators.json")
FAMILY = "tensorrt"
DATA_DEPENDENT = ("NonZero", "Unique", "NonMaxSuppression", "Compress")
# ops whose first input is not the data the table's types describe (a shape; Q/DQ's own rules, _qdq)
NOT_DATA_FIRST = ("QuantizeLinear", "DequantizeLinear", "ConstantOfShape")
# {op: indices of inputs that are shapes}
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Resize": (2, 3),
                "Range": (0, 1, 2), "Upsample": (1,)}
ONNX_TYPES = {1: "FP32", 10: "FP16", 16: "BF16", 11: "DOUBLE", 7: "INT64", 6: "INT32", 3: "INT8", 2: "UINT8",
              9: "BOOL", 22: "INT4", 21: "UINT4", 17: "FP8", 23: "FP4"}
RESIZE = {"mode": ("nearest", "linear"),
          "coordinate_transformation_mode": ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                             "align_corners"),
          "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
          "keep_aspect_ratio_policy": ("stretch",), "antialias": (0,)}
RESIZE_DEFAULTS = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                   "nearest_mode": "round_prefer_floor", "keep_aspect_ratio_policy": "stretch", "antialias": 0}
# what to do instead of an operator TensorRT lacks
FIXES = {"DynamicQuantizeLinear": "use the trt-int8 recipe (static, calibrated activations) instead of int8-dynamic",
         "MatMulInteger": "use the trt-int8 recipe: Q/DQ pairs before a float MatMul, which TensorRT fuses",
         "ConvInteger": "use the trt-int8 recipe", "QLinearMatMul": "use the trt-int8 recipe (QDQ format)",
         "QLinearConv": "use the trt-int8 recipe (QDQ format)",
         "MatMulNBits": "use the trt-int4 recipe: 4-bit weights as a standard DequantizeLinear before a MatMul",
         "GatherBlockQuantized": "keep the embedding table in float (trt-fp16)",
         "GroupQueryAttention": "export the language model with --llm-graph plain (standard ONNX operators)"}


class CheckError(QuantizeError):
    """A bundle TensorRT's parser would refuse: every error finding, each with its fix."""


@dataclass(frozen=True)
class Finding:
    target: str
    part: str
    node: str
    op: str
    kind: str
    severity: str  # "error" or "warning"
    why: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.part}: {self.node or '(model)'} [{self.op}] {self.kind}: {self.why}; fix: {self.fix}"


@lru_cache(maxsize=1)
def tables() -> dict:
    return json.loads(TABLES.read_text())["targets"]


def targets(target: str) -> list[str]:
    """``tensorrt`` is every pinned version; ``tensorrt-10.3`` one of them."""
    known = list(tables())
    if target == FAMILY:
        return known
    if target not in known:
        raise UsageError(f"unknown target {target!r}: expected {FAMILY} (all of them) or one of {', '.join(known)}")
    return [target]


def check_bundle(path, target: str = FAMILY) -> list[Finding]:
    """Every finding for every part of the bundle at ``path``, for every target ``target`` names."""
    from edgevfm.runtime.bundle import open_bundle

    bundle = open_bundle(path)
    return check_parts({name: part.path for name, part in bundle.parts.items()}, target)


def check_parts(parts: dict[str, Path], target: str = FAMILY) -> list[Finding]:
    import onnx

    found = []
    for name, path in parts.items():
        if Path(path).suffix != ".onnx":
            found += [Finding(t, name, "", "", "format", "error", f"{Path(path).name} is not an ONNX graph",
                              "quantize the FP32 bundle with a trt-* recipe") for t in targets(target)]
            continue
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # a file that is not a graph (truncated, replaced)
            from edgevfm.runtime.errors import BundleError

            raise BundleError(Path(path).parent, [f"part {name!r} ({Path(path).name}) is not an ONNX graph onnx can "
                                                  f"read: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"]) from None
        for each in targets(target):
            found += check_model(model, each, name)
    return found


def check_model(model, target: str, part: str = "model") -> list[Finding]:
    """The findings for one ONNX model against one target's table (see the module)."""
    table = tables()[target]
    ops, low, high = table["operators"], *table["opset"]
    graph = _Graph(model)
    out: list[Finding] = []

    def add(node, kind, why, fix, severity="error"):
        out.append(Finding(target, part, getattr(node, "name", "") or (node.output[0] if node else ""),
                           getattr(node, "op_type", ""), kind, severity, why, fix))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < table["parser_min_opset"]:
        add(None, "opset", f"opset {opset} is older than any TensorRT parses ({table['parser_min_opset']})",
            "export again with --opset 17")
    elif opset is not None and not low <= opset <= high:
        add(None, "opset", f"opset {opset} is outside the range TensorRT {table['tensorrt']} documents ({low} to "
            f"{high}); its parser checks each node, not the opset, so this may build", "verify with trtexec on the "
            "device, or export at an opset in the range", severity="warning")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            add(node, "domain", f"{node.domain}.{node.op_type} is not an ONNX operator: TensorRT has no importer for it",
                FIXES.get(node.op_type, "quantize the FP32 bundle with a trt-* recipe"))
            continue
        row = ops.get(node.op_type)
        if row is None or not row["supported"]:
            why = (row or {}).get("restrictions") or f"TensorRT {table['tensorrt']}'s parser does not support it"
            add(node, "operator", f"{node.op_type}: {why}", FIXES.get(node.op_type, "rewrite it with supported operators"))
            continue
        dtype = graph.dtype(node.input[0]) if node.input and node.input[0] else None
        if dtype and row["types"] and dtype not in row["types"] and dtype != "DOUBLE" \
                and node.op_type not in NOT_DATA_FIRST:
            add(node, "type", f"{node.op_type} on {dtype} data: TensorRT takes {', '.join(row['types'])}",
                "cast the data to a supported type before it (INT64 positions to INT32 or float)")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out += [Finding(target, part, node.name or node.output[0], node.op_type, k, "error", w, f)
                    for k, w, f in _qdq(node, graph)]
        if node.op_type == "Resize":
            for attr, allowed in RESIZE.items():
                value = graph.attr(node, attr, RESIZE_DEFAULTS[attr])
                if value not in allowed:
                    add(node, "resize", f"{attr}={value!r}: TensorRT supports {', '.join(map(str, allowed))}",
                        "export with a supported mode (bilinear: mode linear, half_pixel)")
        for name, index in _constant_inputs(node, row.get("restrictions", ""), opset or high):
            if index < len(node.input) and node.input[index] and not graph.constant(node.input[index]):
                add(node, "initializer", f"input {name!r} ({node.input[index]}) must be an initializer or a build-time "
                    "constant", "fold it to a constant at export (a fixed value in the graph)")
        for index in SHAPE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                source = graph.data_source(node.input[index])
                if source:
                    add(node, "shape-tensor", f"its shape input {node.input[index]!r} is computed from the values of "
                        f"graph input {source!r}, not from a shape: TensorRT needs shapes known when the engine runs "
                        "from input shapes alone", "feed the size as the shape of a tensor, or do this step outside "
                        "the graph (the runtime's post-processing)")
        if node.op_type in DATA_DEPENDENT:
            add(node, "data-dependent-shape", f"{node.op_type}'s output size depends on the data: TensorRT allocates "
                "it at run time, with no upper bound", "bound it (TopK with a constant K) or move it out of the graph",
                severity="warning")
    return out


def _qdq(node, graph) -> list[tuple[str, str, str]]:
    """Zero point and scale rules of one QuantizeLinear/DequantizeLinear."""
    import numpy as np

    found = []
    zero = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero is not None and (zero.dtype.kind == "u" or np.any(zero != 0)):
        found.append(("zero-point", f"zero point {node.input[2]!r} is {zero.dtype} with values "
                      f"{np.unique(zero)[:4].tolist()}: TensorRT's quantization is signed and symmetric (zero point 0)",
                      "quantize with the trt-int8 recipe (signed INT8, symmetric activations and weights)"))
    scale = graph.value(node.input[1])
    if scale is None:
        found.append(("qdq-scale", f"scale {node.input[1]!r} is not a constant: TensorRT needs it at build time",
                      "use a calibrated scale stored as an initializer"))
        return found
    if np.any(scale <= 0):
        found.append(("qdq-scale", f"scale {node.input[1]!r} has values <= 0", "calibrate again (a range of 0)"))
    data = graph.shape(node.input[0])
    if scale.ndim == 1 and scale.size > 1 and data is not None:
        axis = graph.attr(node, "axis", 1)
        size = data[axis] if -len(data) <= axis < len(data) else None
        if isinstance(size, int) and size != scale.size:
            found.append(("qdq-scale", f"{scale.size} scales for {size} channels on axis {axis}",
                          "one scale per channel of the quantized axis"))
    elif scale.ndim > 1 and data is not None and len(data) == scale.ndim:
        blocked = [a for a, (d, s) in enumerate(zip(data, scale.shape)) if isinstance(d, int) and d != s]
        if len(blocked) > 1:
            found.append(("qdq-scale", f"scale {list(scale.shape)} blocks {data} along axes {blocked}",
                          "block along one axis only"))
        if graph.dtype(node.input[0]) == "INT4" and isinstance(data[-1], int) and data[-1] % 2:
            found.append(("qdq-scale", f"an INT4 tensor's last dimension must be even, found {data[-1]}",
                          "pad the weight to an even size"))
    return found


def _constant_inputs(node, restrictions: str, opset: int) -> list[tuple[str, int]]:
    """(name, index) of the inputs the table's restriction says must be constant."""
    import onnx.defs

    names = re.findall(r"`(\w+)` (?:input )?must be (?:an initializer|a build-time constant|resolvable to a constant)",
                       restrictions)
    if not names:
        return []
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except Exception:  # an op newer than the model's opset: nothing to map
        return []
    inputs = [i.name for i in schema.inputs]
    return [(name, inputs.index(name)) for name in names if name in inputs]


class _Graph:
    """Producers, constants, inferred types and shapes of one model."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph shape inference cannot follow: types of inputs and initializers only
            inferred = model
        self.constants = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = next(a.t for a in node.attribute if a.name == "value") \
                    if any(a.name == "value" for a in node.attribute) else None
        self.inputs = {i.name for i in model.graph.input} - set(self.constants)
        self.types, self.shapes = {}, {}
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            t = v.type.tensor_type
            self.types[v.name] = ONNX_TYPES.get(t.elem_type)
            if t.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim]
        for name, tensor in self.constants.items():
            if tensor is not None:
                self.types[name], self.shapes[name] = ONNX_TYPES.get(tensor.data_type), list(tensor.dims)
        self._array = numpy_helper.to_array

    def dtype(self, name):
        return self.types.get(name)

    def shape(self, name):
        return self.shapes.get(name)

    def value(self, name):
        tensor = self.constants.get(name)
        if tensor is None:
            node = self.producer.get(name)  # a constant through an Identity or Cast
            if node is not None and node.op_type in ("Identity", "Cast") and node.input[0] in self.constants:
                return self.value(node.input[0])
            return None
        return self._array(tensor)

    def constant(self, name, depth: int = 32) -> bool:
        """Known at build time: an initializer, a Constant, or computed from them and shapes alone."""
        if name in self.constants:
            return True
        node = self.producer.get(name)
        if node is None or depth == 0:
            return False
        if node.op_type in ("Shape", "Size"):
            return True
        return all(self.constant(i, depth - 1) for i in node.input if i)

    def data_source(self, name, depth: int = 64, seen=None) -> str | None:
        """The graph input whose values (not shape) ``name`` is computed from, if any."""
        seen = set() if seen is None else seen
        if name in self.inputs:
            return name
        if name in self.constants or name in seen or depth == 0:
            return None
        seen.add(name)
        node = self.producer.get(name)
        if node is None or node.op_type in ("Shape", "Size"):
            return None
        for i in node.input:
            if i:
                found = self.data_source(i, depth - 1, seen)
                if found:
                    return found
        return None

    @staticmethod
    def attr(node, name, default):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default


def summary(findings: list[Finding], target: str = FAMILY) -> dict:
    """{target: {"errors": n, "warnings": n}}, for the manifest and the command's last line."""
    return {t: {s + "s": sum(1 for f in findings if f.target == t and f.severity == s) for s in ("error", "warning")}
            for t in targets(target)}


def as_json(findings: list[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)

"""Backends run one part of a bundle. Each imports its SDK inside the class, never at import time.

A backend takes and returns numpy arrays keyed by the graph's input and output names.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .cpu import instruction_sets, runs_bf16
from .errors import MissingExtraError, UsageError
from .registry import Registry

BACKENDS: Registry[type] = Registry("backend")


# ONNX type strings -> the manifest's dtype names
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class Backend(Protocol):
    """``signature``: {tensor name: (dtype, shape)} of every input and output, where a shape holds
    ints for fixed sizes and anything else (a name, None) for dynamic ones."""

    input_names: list[str]
    output_names: list[str]
    signature: dict[str, tuple[str, list]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@BACKENDS.register("onnxruntime")
class OrtBackend:
    """ONNX Runtime. ``threads``: intra-op threads (None: ORT's default, one per core);
    ``providers``: execution providers in order of preference (default: CPU); ``low_memory``:
    no memory arena, no memory pattern - slower allocation, but memory is returned after each run
    (with the arena, SAM ViT-B's calibration graph grew from 6 to 11 GB on its second run)."""

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False, provider_options: Sequence[dict] | None = None,
                 config: dict[str, str] | None = None, spin_wait: bool = True, **_):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise MissingExtraError("runtime", "the onnxruntime backend", exc) from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: FP16 graphs warn about every unfoldable Resize
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in (config or {}).items():  # session configuration entries
            options.add_session_config_entry(key, value)
        if low_memory:
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        available = ort.get_available_providers()
        wanted = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in wanted if p not in available]
        if unknown:
            raise UsageError(
                f"execution providers {unknown} are not available in this onnxruntime build "
                f"(available: {available}): install the matching onnxruntime package or pick one of those"
            )
        self.session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=wanted,
                                            provider_options=list(provider_options) if provider_options else None)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.signature = {t.name: (ONNX_DTYPES.get(t.type, t.type), list(t.shape))
                          for t in self.session.get_inputs() + self.session.get_outputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))


# OpenVINO element types -> the manifest's dtype names
OV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i64": "int64",
             "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool"}
# a part's precision (or its ``compute``, the precision its float operations run at) -> the
# inference precision OpenVINO must run it at. It runs BF16 by default on CPUs that have it: an FP32
# part would silently lose precision. Quantized parts keep their integer kernels and run the rest in
# FP32 unless their ``compute`` says bf16 (as fp32 on a CPU without BF16).
OV_INFERENCE_PRECISION = {"bf16": "bf16", "fp16": "f16"}


def cache_root() -> Path:
    """Where compiled models are cached: ``$EDGEVFM_CACHE_DIR``, else the user's cache folder;
    never the bundle, which may be read-only and is hashed."""
    found = os.environ.get("EDGEVFM_CACHE_DIR")
    if found:
        return Path(found)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgevfm"


# OpenVINO's compiled-model cache is kept under this many GB ($EDGEVFM_CACHE_LIMIT_GB); folders unused
# for an hour go, least recently used first, whenever a part is loaded and the cache is over it
CACHE_LIMIT_GB = 4.0
CACHE_GRACE_S = 3600


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # another process removed it meanwhile
                pass
    return total


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:  # gone meanwhile: nothing to remove
        return float("inf")


def prune_compiled_cache(cache: Path, keep: Path | None = None) -> list[Path]:
    """Bring ``cache`` (one folder per compiled part) under ``$EDGEVFM_CACHE_LIMIT_GB`` (default
    :data:`CACHE_LIMIT_GB`): the least recently used folders go first (a folder's time is touched
    whenever a part loads from it), never ``keep`` nor one used within the last hour (another process
    may be compiling into it). A removed folder costs one compile on its part's next load. Returns
    the folders removed."""
    raw = os.environ.get("EDGEVFM_CACHE_LIMIT_GB", "")
    try:
        limit = float(raw) if raw else CACHE_LIMIT_GB
    except ValueError:
        limit = -1.0
    if not 0 <= limit < float("inf"):
        raise UsageError(f"EDGEVFM_CACHE_LIMIT_GB must be a number of gigabytes, 0 or more (found {raw!r}): set "
                         f"it to e.g. 4, or unset it for the default {CACHE_LIMIT_GB:g}")
    try:
        folders = [p for p in cache.iterdir() if p.is_dir()]
    except OSError:
        return []
    used = {p: _folder_bytes(p) for p in folders}
    total, removed, now = sum(used.values()), [], time.time()
    for folder in sorted(folders, key=_mtime):
        if total <= limit * 1e9:
            break
        if folder == keep or now - _mtime(folder) < CACHE_GRACE_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= used[folder]
        removed.append(folder)
    return removed


def one_thread_amx_mlp(core, path: Path, threads: int | None) -> bool:
    """Whether this part would die compiled in BF16 here: on a CPU with AMX, OpenVINO's CPU plugin
    fuses a gated MLP (``MatMul(act(MatMul(x)) * MatMul(x))``: Llama, Qwen2, T5 v1.1) into its AMX
    kernel, and compiling that kernel for one thread kills the process with SIGFPE (a division by
    zero; OpenVINO 2026.3 and 2026.4.1, any size: SmolLM2-135M's as a 64-wide test model's). Such a
    part runs in FP32 at one thread, as where BF16 cannot run; at two threads or more it is BF16."""
    if (threads or os.cpu_count() or 1) != 1 or "amx_bf16" not in instruction_sets():
        return False
    for node in core.read_model(os.fspath(path)).get_ordered_ops():
        if node.get_type_name() == "MatMul":
            gated = node.input_value(0).get_node()
            if gated.get_type_name() == "Multiply" and any(
                    i.get_node().get_type_name() in ("Swish", "Gelu") for i in gated.input_values()):
                return True
    return False


@BACKENDS.register("openvino")
class OpenVinoBackend:
    """OpenVINO, on an IR part (``.xml`` beside its ``.bin``). ``providers``: the device, first of
    the list (default CPU; GPU, NPU or AUTO where present); ``threads``: inference threads;
    ``precision``: the part's compute precision (its ``compute``, else its precision), which sets
    the inference precision explicitly; ``digest``: the
    part's files' sha256, which with the device and OpenVINO's version keys its compiled-model
    cache folder (under :func:`cache_root`), so a changed part never reuses a stale blob;
    ``shapes``: {input name: sizes} the part always runs at (the pipeline's ``run_sizes``): it is
    compiled for them, and OpenVINO then plans its memory once instead of on every call (SAM ViT-B's
    encoder: its global attention maps are no longer mapped afresh per image; the SAM report's
    OpenVINO rows carry the effect). A decoder the generation engine runs stateful holds
    only the stateful compiled model (:meth:`stateful`)."""

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False, precision: str = "fp32", digest: str | None = None,
                 shapes: dict[str, list[int]] | None = None, profile: bool = False, **_):
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingExtraError("openvino", "the openvino backend", exc) from exc
        core = ov.Core()
        device = (list(providers) if providers else ["CPU"])[0]
        available = list(core.available_devices) + ["AUTO"]
        if device not in available:
            raise UsageError(f"OpenVINO device {device!r} is not present here (present: {available}): pick one of "
                             "those")
        hint = OV_INFERENCE_PRECISION.get(precision, "f32")
        if hint == "bf16" and not runs_bf16():  # FP32 where BF16 cannot run, as the plugin itself would
            hint = "f32"
        if hint == "bf16" and one_thread_amx_mlp(core, path, threads):
            hint = "f32"
        config = {"INFERENCE_PRECISION_HINT": hint,
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if os.environ.get("ONEDNN_MAX_CPU_ISA"):
            # the plugin plans a weight-compressed layer's dynamic quantization (8-bit activations) by the
            # CPU itself, and oneDNN held below that CPU cannot make the kernel ("could not create a
            # primitive descriptor"): such layers then run on float activations
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if profile:  # per-node times (python -m edgevfm.benchmarks.profile)
            config["PERF_COUNT"] = True
        if digest:
            self.cache = cache_root() / "openvino" / f"{digest[:32]}-{device}-{ov.__version__.split('-')[0]}"
            self.cache.mkdir(parents=True, exist_ok=True)
            os.utime(self.cache)  # used now: the last folder the size limit removes
            prune_compiled_cache(self.cache.parent, keep=self.cache)
            config["CACHE_DIR"] = str(self.cache)
        self._core, self._path, self._device, self._config = core, os.fspath(path), device, config
        self._shapes, self._stateful, self._lock = shapes, None, threading.Lock()
        # each thread's infer request, dropped with the thread (and all at once by :meth:`stateful`)
        self._requests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._compiled = self._compile()
        self.input_names = [_port_name(t) for t in self.compiled.inputs]
        self.output_names = [_port_name(t) for t in self.compiled.outputs]
        self.signature = {_port_name(t): (OV_DTYPES.get(t.get_element_type().get_type_name(),
                                                        t.get_element_type().get_type_name()),
                                          [d.get_length() if d.is_static else None for d in t.get_partial_shape()])
                          for t in list(self.compiled.inputs) + list(self.compiled.outputs)}

    def _compile(self, model=None):
        if model is None and not self._shapes:  # by file: a cached blob loads without reading the IR
            return self._core.compile_model(self._path, self._device, self._config)
        model = model or self._core.read_model(self._path)
        if self._shapes:  # only the graph's dynamic sizes: a fixed one the manifest contradicts stays a mismatch
            sizes = {}
            for port in model.inputs:
                shape, wanted = port.get_partial_shape(), self._shapes.get(_port_name(port))
                if wanted and shape.rank.is_static and len(wanted) == shape.rank.get_length():
                    sizes[port] = [d.get_length() if d.is_static else w for d, w in zip(shape, wanted)]
            model.reshape(sizes)
        return self._core.compile_model(model, self._device, self._config)

    @property
    def compiled(self):
        """The compiled part. A decoder the engine runs stateful lets go of it (see :meth:`stateful`);
        asked for again, it is compiled again."""
        with self._lock:
            if self._compiled is None:
                self._compiled = self._compile()
            return self._compiled

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # one infer request per thread, made on its first call: the backend may serve many threads,
        # and a request made per call would allocate its tensors on every call
        thread = threading.current_thread()
        request = self._requests.get(thread)  # a lookup needs no lock; adding one does
        if request is None:
            request = self.compiled.create_infer_request()
            with self._lock:
                self._requests[thread] = request
        request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
        # copies: the request's output tensors are overwritten by this thread's next call
        return {name: np.array(request.get_tensor(name).data) for name in self.output_names}

    def stateful(self, pairs: dict[str, str]) -> "StatefulModel":
        """This part compiled with its KV cache inside (each ``past -> present`` pair a state), made
        on the first call and kept: a decode step then copies no cache in or out. Each cached
        tensor is read through a ``beam_idx`` gather (the rows a step continues from: beam search
        reorders the cache inside the graph), the pattern OpenVINO's CPU plugin fuses with the
        attention into one kernel that appends to the cache in place; the cache is kept at the
        part's float precision (the plugin would quantize it to u8 by default)."""
        with self._lock:
            if self._stateful is None:
                from openvino._offline_transformations import apply_make_stateful_transformation

                # the engine then decodes through the stateful model alone: the plain one goes
                # first, with every thread's request on it, so the decoder's weights are never
                # compiled twice at once
                self._compiled = None
                self._requests.clear()
                model = self._core.read_model(self._path)
                params = {n: p for p in model.get_parameters() for n in p.output(0).get_names()}
                results = {n: r for r in model.get_results() for n in r.input_value(0).get_names()}
                _gather_past_by_beam(model, [params[a] for a in pairs])
                apply_make_stateful_transformation(model, [(params[a], results[b]) for a, b in pairs.items()])
                _start_states_empty(model, next(p for n, p in params.items() if n not in pairs))
                config = dict(self._config, KV_CACHE_PRECISION=self._config["INFERENCE_PRECISION_HINT"])
                compiled = self._core.compile_model(model, self._device, config)
                self._stateful = StatefulModel(compiled)
            return self._stateful


def _gather_past_by_beam(model, pasts) -> None:
    """Feed every past input to its cache concatenation through one ``beam_idx`` gather (int32
    rows, axis 0): the rows of the cache a step continues from."""
    import openvino as ov

    beam = ov.opset13.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam.output(0).set_names({"beam_idx"})
    axis = ov.opset13.constant(np.int64(0))
    for past in pasts:
        targets = list(past.output(0).get_target_inputs())
        gathered = ov.opset13.gather(past, beam, axis)
        for target in targets:
            target.replace_source_output(gathered.output(0))
    model.add_parameters([beam])


# what lies between a cached tensor and the attention that reads it (the cache's concatenation, the
# grouped-query broadcast of its heads, layout changes)
_TO_ATTENTION = {"Gather", "Concat", "Unsqueeze", "Broadcast", "Reshape", "Multiply", "Transpose"}


def _feeds_attention(op, depth: int = 6) -> bool:
    """Does this state reach a ScaledDotProductAttention through the cache's usual path?"""
    for target in op.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() == "ScaledDotProductAttention":
            return True
        if depth and node.get_type_name() in _TO_ATTENTION and _feeds_attention(node, depth - 1):
            return True
    return False


def _start_states_empty(model, batch_from) -> None:
    """Give every state that feeds an attention its initial value in the graph - no positions, the
    batch of ``batch_from`` (an input whose first dimension is the batch) - as the CPU plugin's fused
    cache requires (without it the fused graph does not compile). Other states keep none: the plugin
    then mis-sizes a gathered state in a graph it does not fuse (a batch of 0, seen on a bare
    concat-and-sum decoder)."""
    import openvino as ov

    ops = ov.opset13
    batch = ops.gather(ops.shape_of(batch_from, output_type="i64"), ops.constant(np.int64([0])), ops.constant(np.int64(0)))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue" and _feeds_attention(op):
            dims = [batch] + [ops.constant(np.int64([d.get_length() if d.is_static else 0]))
                              for d in list(op.get_output_partial_shape(0))[1:]]
            zeros = ops.broadcast(ops.constant(np.zeros((), op.get_output_element_type(0).to_dtype())),
                                  ops.concat(dims, 0))
            op.set_arguments([zeros])
    model.validate_nodes_and_infer_types()


class StatefulModel:
    """A compiled decoder whose KV cache lives in each infer request's states."""

    def __init__(self, compiled):
        self.compiled = compiled

    def request(self, batch: int, heads: int, head_dim: int) -> "StatefulRequest":
        """A request for one generation, its cache empty for ``batch`` rows."""
        import openvino as ov

        request = self.compiled.create_infer_request()
        for state in request.query_state():  # their default shape has batch 0
            state.state = ov.Tensor(np.zeros((batch, heads, 0, head_dim), np.float32))
        return StatefulRequest(request, batch)


class StatefulRequest:
    """One generation's cache: the request's states, one per past input, and the rows of them the
    next step continues from (``beam_idx``: in order, or as beam search reordered them)."""

    def __init__(self, request, batch: int):
        self.request = request
        self.rows = np.arange(batch, dtype=np.int32)

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        feeds = dict(feeds, beam_idx=self.rows)
        self.request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
        self.rows = np.arange(len(self.rows), dtype=np.int32)  # the step wrote the cache in that order
        return np.array(self.request.get_tensor(output).data)

    def take(self, rows: np.ndarray) -> None:
        """Keep the cache's batch rows ``rows`` (beam search): the next step gathers them inside
        the graph, nothing is copied here."""
        self.rows = self.rows[np.asarray(rows)]

    def cut(self, length: int) -> None:
        """Keep the first ``length`` positions (a conversation's shared prefix), in place (rows a
        beam search chose are taken first)."""
        import openvino as ov

        rows, self.rows = self.rows, np.arange(len(self.rows), dtype=np.int32)
        for state in self.request.query_state():
            state.state = ov.Tensor(np.ascontiguousarray(state.state.data[rows][:, :, :length]))


def _port_name(port) -> str:
    """The graph's own name of an input or output: a converted port also carries the converter's
    internal names (``/vision_model/embeddings/Cast_output_0``) beside the ONNX one."""
    names = sorted(port.get_names())
    return next((n for n in names if not n.startswith(("/", "onnx::"))), names[0])


def open_backend(name: str, path: Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 low_memory: bool = False, precision: str = "fp32", digest: str | None = None,
                 shapes: dict[str, list[int]] | None = None, profiles: dict | None = None, spin_wait: bool = True):
    """``profiles``: {input: (min, opt, max) sizes}, for a backend that builds for a range of
    shapes (TensorRT's optimization profiles, :mod:`.engines`); the others ignore it."""
    return BACKENDS.get(name)(path, threads=threads, providers=providers, low_memory=low_memory,
                              precision=precision, digest=digest, shapes=shapes, profiles=profiles, spin_wait=spin_wait)


from . import tensorrt  # noqa: E402,F401  (registers the tensorrt backend; it imports no SDK until a part opens)

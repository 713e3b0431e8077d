"""A prebuilt TensorRT engine run through TensorRT's Python API, with cuda-python for device memory.

Only a device with TensorRT can run this: it is the whole of the code that no test here reaches
(README, "Jetson"). Inputs are copied to the device, the engine's shapes set from them (within the
profile it was built with), outputs copied back; one stream, synchronous.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MissingExtraError, UsageError


class EngineRunner:
    def __init__(self, engine: Path, profiles: dict):
        try:
            import tensorrt as trt
            from cuda import cudart
        except ImportError as exc:
            from .tensorrt import JETSON_INSTALL

            raise MissingExtraError("TensorRT", "running a prebuilt engine", exc, install=JETSON_INSTALL) from None
        self._trt, self._cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine).read_bytes())
        if self.engine is None:
            raise UsageError(f"TensorRT could not load {engine}: build it again with `edgevfm engines BUNDLE --build`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.signature = {n: (np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name,
                              [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)]) for n in names}
        self.profiles = profiles

    def _check(self, result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = self._cudart, self._trt
        kind = cudart.cudaMemcpyKind
        held = []
        try:
            for name in self.input_names:
                value = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                self.context.set_input_shape(name, value.shape)
                pointer = self._check(cudart.cudaMalloc(max(value.nbytes, 1)))
                held.append(pointer)
                self._check(cudart.cudaMemcpy(pointer, value.ctypes.data, value.nbytes, kind.cudaMemcpyHostToDevice))
                self.context.set_tensor_address(name, pointer)
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = np.empty(shape, trt.nptype(self.engine.get_tensor_dtype(name)))
                pointer = self._check(cudart.cudaMalloc(max(outputs[name].nbytes, 1)))
                held.append(pointer)
                self.context.set_tensor_address(name, pointer)
            if not self.context.execute_async_v3(0):
                raise RuntimeError("TensorRT could not run the engine")
            self._check(cudart.cudaDeviceSynchronize())
            for name, pointer in zip(self.output_names, held[len(self.input_names):]):
                self._check(cudart.cudaMemcpy(outputs[name].ctypes.data, pointer, outputs[name].nbytes,
                                              kind.cudaMemcpyDeviceToHost))
            return outputs
        finally:
            for pointer in held:
                cudart.cudaFree(pointer)


def build_engine(onnx_file: Path, engine: Path, profiles: dict, strongly_typed: bool, fp16: bool) -> None:
    """Build one engine with TensorRT's Python API (as ``trtexec`` would with the plan's flags),
    written to a temporary file and renamed, so a half-built engine is never loaded."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT cannot parse {onnx_file.name}: {errors} (run `edgevfm check` on the bundle)")
    config = builder.create_builder_config()
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profiles.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_file.name}")
    partial = engine.with_name(engine.name + ".partial")
    partial.write_bytes(bytes(serialized))
    partial.replace(engine)

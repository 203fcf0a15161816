"""TensorRT backend (TensorRT 10/11 Python API), for Jetson-class and other NVIDIA GPUs.

Engines are not portable, so the device builds its own from the bundle's explicit-QDQ ONNX and caches
it keyed by TensorRT version, GPU (name + compute capability), the ONNX file's sha256 and the shape
profile. The network is **strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): precision
comes from the QDQ nodes in the ONNX, no calibrator and no INT8/FP16 builder flags (TensorRT 11 only
builds strongly typed networks). Device memory and copies go through cuda-python's runtime API.

This module imports ``tensorrt`` lazily; on a host without it :meth:`TensorRTRuntime.available`
says why and :meth:`TensorRTRuntime.load` raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import BackendUnavailableError, RuntimeBackendError
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile
from runtimes.base import SessionBase, check_inputs

__all__ = ["ShapeProfile", "TensorRTRuntime", "build_engine", "engine_cache_key"]

#: (min, opt, max) batch of the optimization profile for every symbolic batch dimension
ShapeProfile = tuple[int, int, int]
DEFAULT_SHAPES: ShapeProfile = (1, 1, 32)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailableError("cuda-python is not installed (pip install cuda-python)") from exc
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeBackendError(f"CUDA call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


def _gpu_id() -> str:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0))}-sm{props.major}{props.minor}"


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: str, shapes: ShapeProfile) -> str:
    """Engines are valid only for the exact TensorRT version, GPU and shape profile they were built for."""
    raw = json.dumps([onnx_sha256, trt_version, gpu, list(shapes)]).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def build_engine(onnx_path: Path, shapes: ShapeProfile = DEFAULT_SHAPES, workspace_mb: int = 1024) -> bytes:
    """Parse the (QDQ) ONNX into a strongly typed network and build a serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeBackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        lo, mid, hi = ([shapes[k] if d == -1 else d for d in dims] for k in range(3))
        opt_profile.set_shape(t.name, lo, mid, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeBackendError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


class TensorRTSession(SessionBase):
    """Runs a deserialized engine with explicit device buffers (``execute_async_v3``)."""

    def __init__(self, engine, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        import tensorrt as trt

        self._trt = trt
        self._cudart = _cudart()
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._inputs, self._outputs = inputs, outputs
        self._lock = threading.Lock()  # one execution context: serialise runs


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_inputs(self._inputs, feeds)
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            allocations = []
            try:
                for name, arr in feeds.items():
                    ptr = _check(cudart.cudaMalloc(arr.nbytes))
                    allocations.append(ptr)
                    _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream))
                    self._ctx.set_input_shape(name, arr.shape)
                    self._ctx.set_tensor_address(name, ptr)
                results = {}
                for spec in self._outputs:
                    shape = tuple(self._ctx.get_tensor_shape(spec.name))
                    host = np.empty(shape, dtype=spec.dtype)
                    ptr = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                    allocations.append(ptr)
                    self._ctx.set_tensor_address(spec.name, ptr)
                    results[spec.name] = (host, ptr)
                if not self._ctx.execute_async_v3(self._stream):
                    raise RuntimeBackendError("TensorRT execution failed")
                for host, ptr in results.values():
                    _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream))
                _check(cudart.cudaStreamSynchronize(self._stream))
                return {k: h for k, (h, _) in results.items()}
            finally:
                for ptr in allocations:
                    cudart.cudaFree(ptr)

    def close(self) -> None:
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


class TensorRTRuntime:
    """Builds (or reuses a cached) engine from ONNX on this GPU, then runs it."""

    name = "tensorrt"

    def available(self) -> tuple[bool, str]:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            return False, f"tensorrt cannot be imported here ({exc}); it runs on NVIDIA GPUs (Jetson) only"
        try:
            _gpu_id()
        except (BackendUnavailableError, RuntimeBackendError) as exc:
            return False, f"no usable CUDA GPU: {exc}"
        return True, ""

    def load(
        self,
        path: Path,
        profile: DeviceProfile | None = None,
        *,
        threads: int | None = None,
        cache_dir: Path | None = None,
        shapes: ShapeProfile = DEFAULT_SHAPES,
    ) -> TensorRTSession:
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why)
        import tensorrt as trt

        path = Path(path)
        cache_dir = Path(cache_dir or os.environ.get("EDGEKIT_ENGINE_CACHE", Path.home() / ".cache/edgekit/engines"))
        cache_dir.mkdir(parents=True, exist_ok=True)
        onnx_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        key = engine_cache_key(onnx_sha, trt.__version__, _gpu_id(), shapes)
        engine_path = cache_dir / f"{key}.engine"
        if not engine_path.exists():
            blob = build_engine(path, shapes)
            tmp = engine_path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, engine_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            engine_path.unlink(missing_ok=True)
            raise RuntimeBackendError("cached TensorRT engine could not be deserialized; removed, rebuild on next load")
        inputs, outputs = [], []
        np_names = {
            trt.float32: "float32", trt.float16: "float16", trt.int8: "int8",
            trt.int32: "int32", trt.int64: "int64", trt.bool: "bool", trt.uint8: "uint8",
        }
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = [d if d >= 0 else "batch" for d in engine.get_tensor_shape(name)]
            spec = TensorSpec(name=name, dtype=np_names[engine.get_tensor_dtype(name)], shape=dims)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return TensorRTSession(engine, inputs, outputs)

"""ONNX Runtime backend: threads and execution providers from the device profile."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import BackendUnavailableError, InputError, RuntimeBackendError
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile
from runtimes.base import SessionBase, check_inputs

__all__ = ["OnnxRuntime", "OrtSession", "onnx_dtype_name"]

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def onnx_dtype_name(ort_type: str) -> str:
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise RuntimeBackendError(f"unsupported tensor type {ort_type}") from None


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else (d or "batch") for d in arg.shape]
    return TensorSpec(name=arg.name, dtype=onnx_dtype_name(arg.type), shape=shape)


class OrtSession(SessionBase):
    """An ``onnxruntime.InferenceSession`` behind the edgekit session contract."""

    def __init__(self, session, *, validate: bool = True):
        self._s = session
        self._inputs = [_spec(a) for a in session.get_inputs()]
        self._outputs = [_spec(a) for a in session.get_outputs()]
        self._out_names = [o.name for o in self._outputs]
        self._validate = validate


    @property
    def providers(self) -> list[str]:
        return self._s.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._validate:
            feeds = check_inputs(self._inputs, feeds)
        try:
            res = self._s.run(self._out_names, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument, ...)
            if "INVALID_ARGUMENT" in str(exc):
                raise InputError(f"onnxruntime rejected the inputs: {exc}") from exc
            raise RuntimeBackendError(f"onnxruntime failed to run: {exc}") from exc
        return dict(zip(self._out_names, res, strict=True))

    def close(self) -> None:
        self._s = None


class OnnxRuntime:
    """Loads ONNX files with onnxruntime; providers are the profile's, filtered to those present."""

    name = "onnxruntime"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        return True, ""

    def load(
        self,
        path: Path,
        profile: DeviceProfile | None = None,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        validate: bool = True,
    ) -> OrtSession:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed (pip install edgekit[agent])") from exc
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        n = threads or (profile.threads if profile else None)
        if n:
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        wanted = providers or (profile.execution_providers if profile else ["CPUExecutionProvider"])
        present = set(ort.get_available_providers())
        chosen = [p for p in wanted if p in present] or ["CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        except Exception as exc:
            raise RuntimeBackendError(f"onnxruntime cannot load {path}: {exc}") from exc
        return OrtSession(sess, validate=validate)

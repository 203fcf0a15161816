"""Open Inference Protocol v2 JSON tensors ↔ numpy, validated against the manifest's tensor specs.

Every problem is a :class:`RequestError` with the HTTP status and a message naming the input and what
is wrong (name, datatype, shape, element count, value type, non-finite values), so the server can
answer 4xx and never hand a bad tensor to the runtime.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import AgentError
from edgekit.manifest import Manifest, TensorSpec

__all__ = [
    "DATATYPES",
    "InferRequest",
    "RequestError",
    "decode_inputs",
    "encode_outputs",
    "parse_request",
    "spec_json",
]

#: v2 datatype → numpy dtype name (BYTES is not supported by edgekit models)
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
_TO_V2 = {v: k for k, v in DATATYPES.items()}
_MAX_ELEMENTS = 1 << 28


class RequestError(AgentError):
    """A request the server answers with a 4xx (``status``) and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Loose):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=32)
    datatype: str = Field(min_length=1, max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any


class RequestOutput(_Loose):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class InferRequest(_Loose):
    """A v2 inference request (``id``, ``parameters``, ``inputs``, ``outputs``)."""

    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=64)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=64)


def parse_request(body: Any) -> InferRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with an 'inputs' list")
    try:
        return InferRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        raise RequestError(f"invalid inference request: {loc}: {err['msg']}") from None


def _flat(data: Any, name: str) -> list:
    """Flatten nested lists (v2 allows nested or flat data), refusing ragged or non-list content."""
    if not isinstance(data, list):
        raise RequestError(f"input {name!r}: 'data' must be a list of values")
    out: list = []
    stack = [iter(data)]
    depth = 0
    while stack:
        try:
            v = next(stack[-1])
        except StopIteration:
            stack.pop()
            depth -= 1
            continue
        if isinstance(v, list):
            depth += 1
            if depth > 32:
                raise RequestError(f"input {name!r}: 'data' is nested too deeply")
            stack.append(iter(v))
        else:
            out.append(v)
    return out


def _check_nesting(data: list, shape: list[int], name: str, depth: int = 0) -> None:
    """Nested data must follow the declared shape exactly (flat data is the other accepted form)."""
    if depth >= len(shape) or len(data) != shape[depth]:
        raise RequestError(f"input {name!r}: nested 'data' does not follow shape {shape} at depth {depth}")
    last = depth == len(shape) - 1
    for v in data:
        if isinstance(v, list) == last:
            raise RequestError(f"input {name!r}: nested 'data' does not follow shape {shape} at depth {depth + 1}")
        if not last:
            _check_nesting(v, shape, name, depth + 1)


def _values(flat: list, spec: TensorSpec) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    kind = dtype.kind
    allowed = {bool} if kind == "b" else ({int} if kind in "iu" else {int, float})
    if not set(map(type, flat)) <= allowed:  # one C-level pass; the slow search only on error
        v = next(v for v in flat if type(v) not in allowed)
        want = {"b": "booleans", "i": "integers", "u": "integers"}.get(kind, "numbers")
        raise RequestError(f"input {spec.name!r}: expected {want} for {spec.dtype}, got {type(v).__name__} {v!r:.40}")
    if kind in "iu" and flat:
        info = np.iinfo(dtype)
        lo, hi = min(flat), max(flat)
        if lo < info.min or hi > info.max:
            raise RequestError(f"input {spec.name!r}: value out of range for {spec.dtype} [{info.min}, {info.max}]")
    try:
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestError(f"input {spec.name!r}: cannot convert data to {spec.dtype}: {exc}") from None


def decode_inputs(req: InferRequest, manifest: Manifest) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays that fit the model's input specs."""
    specs = {s.name: s for s in manifest.inputs}
    seen: dict[str, np.ndarray] = {}
    for inp in req.inputs:
        spec = specs.get(inp.name)
        if spec is None:
            raise RequestError(
                f"unknown input {inp.name!r}; model {manifest.name} takes {', '.join(sorted(specs))}"
            )
        if inp.name in seen:
            raise RequestError(f"input {inp.name!r} is given twice")
        want = _TO_V2[spec.dtype]
        if inp.datatype not in DATATYPES:
            raise RequestError(f"input {inp.name!r}: unknown datatype {inp.datatype!r}; supported: {', '.join(DATATYPES)}")
        if inp.datatype != want:
            raise RequestError(f"input {inp.name!r}: datatype {inp.datatype} does not match the model's {want}")
        if any(d < 0 for d in inp.shape):
            raise RequestError(f"input {inp.name!r}: shape {inp.shape} has a negative dimension")
        if not spec.matches(tuple(inp.shape)):
            raise RequestError(f"input {inp.name!r}: shape {inp.shape} does not match the model's {spec_shape(spec)}")
        expected = math.prod(inp.shape)
        if expected > _MAX_ELEMENTS:
            raise RequestError(f"input {inp.name!r}: shape {inp.shape} is too large", status=413)
        if isinstance(inp.data, list) and any(isinstance(v, list) for v in inp.data):
            _check_nesting(inp.data, inp.shape, inp.name)
        flat = _flat(inp.data, inp.name)
        if len(flat) != expected:
            raise RequestError(
                f"input {inp.name!r}: {len(flat)} elements given, shape {inp.shape} needs {expected}"
            )
        arr = _values(flat, spec).reshape(inp.shape)
        if arr.dtype.kind == "f" and not manifest.allow_non_finite and not np.all(np.isfinite(arr)):
            raise RequestError(f"input {inp.name!r}: contains NaN or infinite values, which this model does not allow")
        seen[inp.name] = arr
    if missing := sorted(set(specs) - set(seen)):
        raise RequestError(f"missing input(s) {', '.join(missing)}")
    batch = {a.shape[0] for n, a in seen.items() if specs[n].shape and isinstance(specs[n].shape[0], str)}
    if len(batch) > 1:
        raise RequestError(f"inputs disagree on the batch size: {sorted(batch)}")
    return seen


def encode_outputs(outputs: dict[str, np.ndarray], req: InferRequest, manifest: Manifest) -> list[dict]:
    """v2 output tensors, restricted to the requested outputs when the request names some."""
    names = [o.name for o in manifest.outputs if o.name in outputs]
    if req.outputs:
        wanted = [o.name for o in req.outputs]
        if unknown := sorted(set(wanted) - set(names)):
            raise RequestError(f"unknown output(s) {', '.join(unknown)}; the model has {', '.join(names)}")
        names = [n for n in names if n in wanted]
    result = []
    for n in names:
        arr = np.asarray(outputs[n])
        dt = _TO_V2.get(arr.dtype.name)
        if dt is None:
            raise AgentError(f"output {n!r} has dtype {arr.dtype}, which the v2 protocol cannot carry")
        result.append({"name": n, "datatype": dt, "shape": list(arr.shape), "data": arr.ravel().tolist()})
    return result


def spec_shape(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def spec_json(spec: TensorSpec) -> dict:
    """A tensor's v2 metadata (symbolic dimensions are ``-1``)."""
    return {"name": spec.name, "datatype": _TO_V2[spec.dtype], "shape": spec_shape(spec)}

"""Small ONNX helpers shared by the passes: specs, sizes, parameter and MAC counts, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgekit.errors import CompressError
from edgekit.manifest import TensorSpec

__all__ = ["count_onnx", "load_onnx", "onnx_specs", "precision_of", "save_onnx"]

_ELEM = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool",
}


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError
        raise CompressError(f"cannot read ONNX model {path}: {exc}") from exc


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save as one self-contained file (no external data: the bundle carries one model.onnx)."""
    onnx.save_model(model, str(path), save_as_external_data=False)


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    t = vi.type.tensor_type
    dtype = _ELEM.get(t.elem_type)
    if dtype is None:
        raise CompressError(f"tensor {vi.name} has an unsupported element type {t.elem_type}")
    dims: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or ("batch" if i == 0 else f"d{i}"))
    return TensorSpec(name=vi.name, dtype=dtype, shape=dims)


def onnx_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inits = {i.name for i in model.graph.initializer}
    ins = [_spec(v) for v in model.graph.input if v.name not in inits]
    outs = [_spec(v) for v in model.graph.output]
    return ins, outs


def precision_of(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
              "ConvInteger", "DynamicQuantizeLinear"}:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def count_onnx(model: onnx.ModelProto, batch: int = 1) -> dict[str, float]:
    """Parameters (weights only, not quantization scales) and MACs of Conv/Gemm/MatMul at ``batch``."""
    params = 0
    scale_like = set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale_like.update(n.input[1:])
    init_shapes = {}
    for init in model.graph.initializer:
        shape = tuple(init.dims)
        init_shapes[init.name] = shape
        if init.name not in scale_like and len(shape) >= 1:
            params += int(np.prod(shape)) if shape else 1
    # Follow DequantizeLinear so a QDQ weight is seen by the Conv that consumes it.
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    try:
        inferred = shape_inference.infer_shapes(_fix_batch(model, batch))
    except Exception:  # shape inference is best effort for MAC counts
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    macs = 0
    for n in model.graph.node:
        w_name = alias.get(n.input[1], n.input[1]) if len(n.input) > 1 else None
        out = shapes.get(n.output[0]) if n.output else None
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv") and out:
            w = init_shapes.get(alias.get(n.input[3 if n.op_type == "QLinearConv" else 1], ""),
                                init_shapes.get(n.input[3 if n.op_type == "QLinearConv" else 1]))
            if w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul", "MatMulInteger") and out:
            a = shapes.get(n.input[0])
            if a:
                macs += int(np.prod(out)) * int(a[-1])
            elif w_name in init_shapes:
                macs += int(np.prod(out)) * int(init_shapes[w_name][0])
    return {"params": float(params), "macs": float(macs)}


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    return m


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None

"""Residual, MobileNet-style (depthwise + squeeze-excite + concat), 1-D and two-input transformer models
each go prune → export (ONNX Runtime parity on real samples) → INT8 static QDQ (and, for the
transformer, dynamic INT8 too), staying close to the float model on real samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgekit.compress.context import Budget
from edgekit.compress.inference import predict_onnx
from edgekit.compress.metrics import cosine_fidelity
from edgekit.compress.passes import ExportConfig, PruneConfig, QuantizeConfig
from edgekit.compress.pipeline import Workspace
from edgekit.compress.recipe import DataSpec, ModelSpec
from edgekit.manifest import TensorSpec

CASES = {
    "residual": ("tiny_models:TinyResNet", "res.pt", "images.npz",
                 [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])], "magnitude"),
    "mobilenet": ("tiny_models:TinyMobileNet", "mobile.pt", "images.npz",
                  [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])], "group_norm"),
    "signal-1d": ("tiny_models:Tiny1D", "sig.pt", "signals.npz",
                  [TensorSpec(name="signal", dtype="float32", shape=["batch", 2, 64])], "taylor"),
    "transformer": ("tiny_models:TinyEncoder", "enc.pt", "tokens.npz",
                    [TensorSpec(name="input_ids", dtype="int64", shape=["batch", 12]),
                     TensorSpec(name="attention_mask", dtype="int64", shape=["batch", 12])], "magnitude"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prune_export_quantize_with_parity(case, workdir, tmp_path):
    factory, ckpt, data, inputs, method = CASES[case]
    if case == "signal-1d":
        np.savez(tmp_path / "signals.npz", signal=np.load(workdir / data)["x"], y=np.load(workdir / data)["y"])
        data_path = tmp_path / "signals.npz"
    else:
        data_path = workdir / data
    ws = Workspace(model=ModelSpec(factory=factory, checkpoint=str(workdir / ckpt)), inputs=inputs,
                   output_names=["logits"], data=DataSpec(source=str(data_path)), metric="accuracy",
                   target="x86-avx2", budget=Budget(max_accuracy_drop=100), cache_dir=tmp_path / "cache",
                   base_dir=workdir, quiet=True, bench_iterations=10)
    # The residual case prunes globally in two steps with fine-tuning after each; the others per layer.
    prune = (PruneConfig(method=method, ratio=0.5, finetune_epochs=1, global_pruning=True, iterations=2)
             if case == "residual" else PruneConfig(method=method, ratio=0.5, finetune_epochs=1))
    stages = ws.run_chain([prune, ExportConfig(), QuantizeConfig(calibration_samples=32)])
    pruned, exported, quantized = stages

    # Structured pruning really removed parameters (and the model still runs: it was evaluated).
    before = ws.source_stage().metrics["params"]
    assert pruned.metrics["params"] < 0.8 * before, (case, pruned.metrics["params"], before)
    assert pruned.records[-1].metrics["params_after"] < pruned.records[-1].metrics["params_before"]

    # Export: opset >= 17, symbolic batch, parity checked on real samples.
    model = onnx.load(exported.artifact.onnx_path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    rec = exported.records[-1]
    assert rec.metrics["parity_samples"] > 0 and rec.metrics["parity_max_abs_diff"] < 1e-3

    # Quantize: INT8 whose outputs stay close to the float model on real samples.
    qmodel = onnx.load(quantized.artifact.onnx_path)
    ops = {n.op_type for n in qmodel.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # explicit QDQ
    qp = quantized.records[-1].params
    assert (qp["activation_type"], qp["weight_type"]) == ("int8", "int8")  # the x86-avx2 profile: S8S8
    val = ws.data.val.head(64)
    f32 = predict_onnx(exported.artifact.onnx_path, val)
    i8 = predict_onnx(quantized.artifact.onnx_path, val)
    assert cosine_fidelity(i8, f32) > 0.95
    if case == "transformer":
        # Attention graphs quantize MatMul/Gemm only (masks do not survive INT8 Add/Softmax) ...
        assert qp["op_types_used"] == ["MatMul", "Gemm", "Conv"]
        # ... and also take the MatMul-heavy route: dynamic INT8.
        dyn = ws.run_chain([QuantizeConfig(mode="dynamic")], start=exported.artifact)[-1]
        assert {n.op_type for n in onnx.load(dyn.artifact.onnx_path).graph.node} & {
            "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
        assert cosine_fidelity(predict_onnx(dyn.artifact.onnx_path, val), f32) > 0.95
    for s in stages:
        assert s.metrics["p50_ms"] > 0 and "accuracy" in s.metrics

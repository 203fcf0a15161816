"""Individual pass behaviour on tiny models: QAT, unstructured pruning, prune-then-distill with feature
matching, accuracy-aware INT8 fallback, dynamic INT8, FP16 and the TensorRT skip record."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgekit.compress.context import Budget
from edgekit.compress.passes import (
    DistillConfig,
    ExportConfig,
    PruneConfig,
    QATConfig,
    QuantizeConfig,
    TensorRTConfig,
)
from edgekit.compress.pipeline import Workspace
from edgekit.compress.recipe import DataSpec, ModelSpec
from edgekit.compress.torchio import load_module
from edgekit.manifest import TensorSpec

IMAGE = [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])]


@pytest.fixture(scope="module")
def ws(workdir, tmp_path_factory):
    return Workspace(model=ModelSpec(factory="tiny_models:TinyResNet", checkpoint=str(workdir / "res.pt")),
                     inputs=IMAGE, output_names=["logits"], data=DataSpec(source=str(workdir / "images.npz")),
                     metric="accuracy", target="x86-avx2", budget=Budget(max_accuracy_drop=100),
                     cache_dir=tmp_path_factory.mktemp("cache"), base_dir=workdir, quiet=True, bench_iterations=5)


def test_qat_bakes_weights_onto_the_int8_grid(ws):
    from edgekit.compress.passes.qat import conv_bn_pairs

    (stage,) = ws.run_chain([QATConfig(epochs=1)])
    model = load_module(stage.artifact)
    conv, bn = model.stem[0], model.stem[1]
    assert conv_bn_pairs(model)[conv] is bn and model.fc not in conv_bn_pairs(model)
    # The weight ONNX Runtime quantizes is the BN-folded one: it sits on its per-channel INT8 grid.
    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().reshape(-1, 1)
    folded = conv.weight.detach().reshape(conv.weight.shape[0], -1) * k
    q = folded / (folded.abs().amax(1, keepdim=True) / 127)
    assert torch.allclose(q, q.round(), atol=2e-3), "QAT output weights must sit on their INT8 grid"
    w = model.fc.weight.detach()  # a Linear without BN: its own weight is on the grid
    qf = w / (w.abs().amax(1, keepdim=True) / 127)
    assert torch.allclose(qf, qf.round(), atol=1e-3)
    assert not any("parametrizations" in key for key in model.state_dict())


def test_unstructured_pruning_reaches_the_sparsity(ws):
    (stage,) = ws.run_chain([PruneConfig(method="unstructured", ratio=0.6)])
    assert stage.records[0].metrics["sparsity"] == pytest.approx(0.6, abs=0.02)
    model = load_module(stage.artifact)
    assert float((model.b1.conv1.weight == 0).float().mean()) > 0.3
    assert model.fc.weight.ne(0).all(), "the head is never pruned"


def test_prune_then_distill_with_feature_matching(ws):
    import torch

    torch.manual_seed(0)  # the teacher's random init decides where global pruning cuts; keep it fixed
    cfg = DistillConfig(derive_ratio=0.5, epochs=1, feature_pairs=[("b1", "b1")], augment="shift")
    (stage,) = ws.run_chain([cfg])
    student = load_module(stage.artifact)
    assert student.b1.conv1.out_channels < 8
    rec = stage.records[0].metrics
    # Half the channels, but global pruning spreads the cuts unevenly across layers: seen 0.55-0.63.
    assert rec["student_params"] < 0.7 * rec["teacher_params"]


def test_accuracy_aware_fallback_keeps_sensitive_nodes_in_float(workdir, tmp_path):
    ws = Workspace(model=ModelSpec(factory="tiny_models:OutlierNet"), inputs=IMAGE, output_names=["logits"],
                   data=DataSpec(source=str(workdir / "images.npz")), metric="accuracy", target="x86-avx2",
                   budget=Budget(max_accuracy_drop=1.0), cache_dir=tmp_path / "c", base_dir=workdir, quiet=True,
                   bench_iterations=5)
    assert ws.ctx.baseline > 0.95
    export = ws.run_chain([ExportConfig()])[-1]
    plain = ws.run_chain([QuantizeConfig(calibration_samples=64, fallback=False, strict=False)],
                         start=export.artifact)[-1]
    assert plain.metrics["accuracy"] < ws.ctx.baseline - 0.2, "INT8 must hurt this model for the test to mean anything"
    (stage,) = ws.run_chain([QuantizeConfig(calibration_samples=64, max_fallback_nodes=8)], start=export.artifact)
    params = stage.records[0].params
    assert params["nodes_to_exclude"], "sensitive nodes were kept in float"
    names = {n.name for n in onnx.load(export.artifact.onnx_path).graph.node}
    assert set(params["nodes_to_exclude"]) <= names | {n.name for n in onnx.load(stage.artifact.onnx_path).graph.node}
    assert stage.metrics["accuracy"] >= ws.ctx.baseline - 0.01
    assert stage.trials[0]["excluded"] == 0 and stage.trials[-1]["excluded"] == len(params["nodes_to_exclude"])
    assert stage.artifact.meta["precision"] == "mixed"
    # Strict mode with no fallback allowed fails with the gap named.
    from edgekit.errors import BudgetError

    with pytest.raises(BudgetError, match="INT8 quantization misses the quality budget: accuracy"):
        ws.run_chain([QuantizeConfig(calibration_samples=64, fallback=False)], start=export.artifact)


def test_dynamic_int8_and_fp16_and_tensorrt_skip(workdir, tmp_path):
    ws = Workspace(model=ModelSpec(factory="tiny_models:TinyEncoder", checkpoint=str(workdir / "enc.pt")),
                   inputs=[TensorSpec(name="input_ids", dtype="int64", shape=["batch", 12]),
                           TensorSpec(name="attention_mask", dtype="int64", shape=["batch", 12])],
                   output_names=["logits"], data=DataSpec(source=str(workdir / "tokens.npz")), metric="accuracy",
                   target="x86-avx2", budget=Budget(max_accuracy_drop=100), cache_dir=tmp_path / "c",
                   base_dir=workdir, quiet=True, bench_iterations=5)
    export = ws.run_chain([ExportConfig()])[-1]
    dyn = ws.run_chain([QuantizeConfig(mode="dynamic")], start=export.artifact)[-1]
    ops = {n.op_type for n in onnx.load(dyn.artifact.onnx_path).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    fp16 = ws.run_chain([QuantizeConfig(mode="fp16")], start=export.artifact)[-1]
    model = onnx.load(fp16.artifact.onnx_path)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # I/O types kept
    assert np.isfinite(fp16.metrics["accuracy"])
    trt = ws.run_chain([TensorRTConfig()], start=export.artifact)[-1]
    rec = trt.records[0]
    from runtimes.trt import TensorRTRuntime

    ok, why = TensorRTRuntime().available()
    if ok:
        assert rec.params["skipped"] is False and rec.metrics["engine_mb"] > 0
    else:
        assert rec.params["skipped"] is True and rec.params["reason"] == why
        assert trt.artifact.sha256 == export.artifact.sha256 and "tensorrt skipped" in trt.notes[0]


def test_unlabeled_data_is_budgeted_by_fidelity(workdir, tmp_path):
    x = np.load(workdir / "images.npz")["x"]
    np.savez(tmp_path / "unlabeled.npz", image=x)
    ws = Workspace(model=ModelSpec(factory="tiny_models:TinyResNet", checkpoint=str(workdir / "res.pt")),
                   inputs=IMAGE, output_names=["embedding"], data=DataSpec(source=str(tmp_path / "unlabeled.npz")),
                   metric="accuracy", target="x86-avx2", budget=Budget(min_fidelity=0.95), cache_dir=tmp_path / "c",
                   base_dir=workdir, quiet=True, bench_iterations=5)
    assert not ws.data.labeled and ws.ctx.metric.name == "fidelity"
    assert ws.ctx.baseline == pytest.approx(1.0)
    stages = ws.run_chain([PruneConfig(ratio=0.3, finetune_epochs=1), ExportConfig(), QuantizeConfig(calibration_samples=32)])
    for s in stages:
        assert 0.0 < s.metrics["fidelity"] <= 1.0 + 1e-6
    assert (stages[-1].metrics["fidelity"] >= 0.95) == (not ws.meets(stages[-1].metrics))
    assert ws.meets({"fidelity": 0.5}) == ["fidelity 0.5000 vs source 1.0000"]


def test_latency_on_a_host_that_is_not_the_target_is_flagged(workdir, tmp_path):
    import platform

    from edgekit.compress.run import _host_note

    ws = Workspace(model=ModelSpec(factory="tiny_models:TinyResNet", checkpoint=str(workdir / "res.pt")),
                   inputs=IMAGE, output_names=["logits"], data=DataSpec(source=str(workdir / "images.npz")),
                   metric="accuracy", target="raspberry-pi-5", budget=Budget(), cache_dir=tmp_path / "c",
                   base_dir=workdir, quiet=True, bench_iterations=5)
    note = _host_note(ws)
    assert note["runtime"] == "onnxruntime" and note["threads"] == 4  # the profile's thread count
    if platform.machine() != "aarch64":
        assert "not on a raspberry-pi-5 (aarch64)" in note["warning"]


def test_qat_is_tried_only_when_int8_alone_misses(ws):
    from edgekit.compress.budget import _qat_worth_it
    from edgekit.compress.pipeline import Stage

    base = ws.ctx.baseline
    strict = ws.ctx.budget.model_copy(update={"max_accuracy_drop": 1.0})
    ws.ctx.budget, saved = strict, ws.ctx.budget
    try:
        src = ws.source
        fp32 = Stage("export", src, [], {"accuracy": base})
        int8_bad = Stage("quantize", src.__class__(**{**src.__dict__, "meta": {"precision": "int8"}}), [],
                         {"accuracy": base - 0.05})
        int8_ok = Stage("quantize", int8_bad.artifact, [], {"accuracy": base})
        assert _qat_worth_it(ws, fp32, [int8_bad], [object()])
        assert not _qat_worth_it(ws, fp32, [int8_ok], [object()])
        assert not _qat_worth_it(ws, Stage("export", src, [], {"accuracy": base - 0.05}), [int8_bad], [object()])
    finally:
        ws.ctx.budget = saved


def test_relative_error_fidelity_metric():
    from edgekit.compress.context import Budget
    from edgekit.compress.metrics import get_metric

    m = get_metric("relative-error", labeled=True)
    ref = {"y": np.array([[3.0, 4.0]])}
    assert m.name == "fidelity-relerr"
    assert m({"y": np.array([[3.0, 4.0]])}, None, ref) == pytest.approx(1.0)
    assert m({"y": np.array([[3.0, 4.5]])}, None, ref) == pytest.approx(0.9)  # 0.5 / 5 = 10 % error
    b = Budget(min_fidelity=0.95)
    assert not b.quality_ok("fidelity-relerr", 1.0, 0.9) and b.quality_ok("fidelity-relerr", 1.0, 0.96)


def test_find_heads_names_only_the_output_layer_of_an_mlp():
    """Hidden outputs are freed as the Sequential runs; their ids get reused by later tensors, so an
    id-based match once took every Linear for the head and pruning skipped the whole network."""
    from torch import nn

    from edgekit.compress.passes.prune import find_heads

    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()
    assert find_heads(model, (torch.zeros(2, 8),)) == [model[-1]]

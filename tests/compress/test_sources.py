"""Model sources: TorchScript, a torch.export archive (.pt2) and ONNX (then only ONNX-level passes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.compress.context import Budget
from edgekit.compress.metrics import get_metric
from edgekit.compress.passes import ExportConfig, PruneConfig, QuantizeConfig
from edgekit.compress.pipeline import Workspace
from edgekit.compress.recipe import DataSpec, ModelSpec
from edgekit.errors import CompressError
from edgekit.manifest import TensorSpec

IMAGE = [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])]


def _ws(workdir, tmp_path, path: str, inputs=IMAGE):
    return Workspace(model=ModelSpec(path=path), inputs=inputs, output_names=["logits"],
                     data=DataSpec(source=str(workdir / "images.npz")), metric="accuracy", target="x86-avx2",
                     budget=Budget(max_accuracy_drop=100), cache_dir=tmp_path / "c", base_dir=workdir, quiet=True,
                     bench_iterations=5)


@pytest.fixture
def trained_res(workdir):
    import tiny_models as tm

    m = tm.TinyResNet()
    m.load_state_dict(torch.load(workdir / "res.pt", weights_only=True))
    return m.eval()


def test_torchscript_source_exports_and_quantizes_but_cannot_be_pruned(workdir, tmp_path, trained_res):
    path = tmp_path / "res.ts"
    torch.jit.trace(trained_res, torch.zeros(2, 1, 16, 16)).save(str(path))
    ws = _ws(workdir, tmp_path, str(path))
    assert ws.source.format == "torchscript"
    exported, quantized = ws.run_chain([ExportConfig(), QuantizeConfig(calibration_samples=32)])
    assert exported.records[0].metrics["parity_max_abs_diff"] < 1e-3
    assert quantized.artifact.meta["precision"] in ("int8", "mixed")
    with pytest.raises(CompressError, match="prune needs a model given as 'module:factory'"):
        ws.run_chain([PruneConfig()])


def test_torch_export_archive_goes_through_the_dynamo_exporter(workdir, tmp_path, trained_res):
    path = tmp_path / "res.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(trained_res, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    ws = _ws(workdir, tmp_path, str(path))
    assert ws.source.format == "export"
    (exported,) = ws.run_chain([ExportConfig()])
    assert exported.records[0].params["exporter_used"] == "dynamo"
    assert exported.records[0].metrics["parity_max_abs_diff"] < 1e-3


def test_onnx_source_allows_only_onnx_passes(workdir, tmp_path, trained_res):
    path = tmp_path / "res.onnx"
    torch.onnx.export(trained_res, (torch.zeros(2, 1, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    ws = _ws(workdir, tmp_path, str(path), inputs=None)
    assert ws.source.kind == "onnx" and ws.source.inputs[0].shape[0] == "batch"
    (q,) = ws.run_chain([QuantizeConfig(calibration_samples=32)])
    assert q.metrics["accuracy"] == pytest.approx(ws.ctx.baseline, abs=0.1)
    with pytest.raises(CompressError, match="only ONNX-level passes apply"):
        ws.run_chain([PruneConfig()])


def test_custom_metric_reference(tmp_path):
    (tmp_path / "mymetric.py").write_text(
        "import numpy as np\n"
        "def top2(outputs, labels):\n"
        "    top = np.argsort(-outputs['logits'], 1)[:, :2]\n"
        "    return float((top == labels[:, None]).any(1).mean())\n"
    )
    metric = get_metric("mymetric:top2", labeled=True, base=tmp_path)
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.07, 0.03]])
    assert metric({"logits": logits}, np.array([2, 2])) == pytest.approx(0.5)
    assert get_metric("accuracy", labeled=False).name == "fidelity"

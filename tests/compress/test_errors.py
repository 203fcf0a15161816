"""Bad input gets a clear, specific error: data shapes, unexportable models, checkpoints, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.compress.context import Budget
from edgekit.compress.data import load_data
from edgekit.compress.passes import ExportConfig
from edgekit.compress.pipeline import Workspace
from edgekit.compress.recipe import DataSpec, ModelSpec
from edgekit.errors import ConfigError, ExportError
from edgekit.manifest import TensorSpec

IMAGE = [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])]


def test_data_with_the_wrong_shape_names_input_and_shapes(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3, 16, 16), np.float32), y=np.zeros(10, np.int64))
    with pytest.raises(ConfigError) as e:
        load_data(tmp_path / "d.npz", IMAGE)
    assert "input 'image' has shape [10, 3, 16, 16], the model expects ['batch', 1, 16, 16]" in str(e.value)


def test_data_errors_missing_arrays_labels_and_dtypes(tmp_path):
    np.savez(tmp_path / "a.npz", pixels=np.zeros((10, 1, 16, 16), np.float32))
    with pytest.raises(ConfigError, match=r"no array named image \(or x\); arrays present: pixels"):
        load_data(tmp_path / "a.npz", IMAGE)
    np.savez(tmp_path / "b.npz", x=np.zeros((10, 1, 16, 16), np.float32), y=np.zeros(7, np.int64))
    with pytest.raises(ConfigError, match=r"labels for \d+ samples"):
        load_data(tmp_path / "b.npz", IMAGE)
    np.savez(tmp_path / "s.npz", x=np.zeros((10, 1, 16, 16), np.float32), y=np.array(["cat", "dog"] * 5))
    with pytest.raises(ConfigError, match=r"labels are <U3; give integer class ids"):
        load_data(tmp_path / "s.npz", IMAGE)
    np.savez(tmp_path / "c.npz", x=np.zeros((10, 1, 16, 16), np.complex64))
    with pytest.raises(ConfigError, match="is complex64, the model expects float32"):
        load_data(tmp_path / "c.npz", IMAGE)
    with pytest.raises(ConfigError, match="not an .npz file, an image folder or a 'module:function'"):
        load_data("no/such/thing", IMAGE)
    two = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", 12]),
           TensorSpec(name="attention_mask", dtype="int64", shape=["batch", 12])]
    np.savez(tmp_path / "t.npz", input_ids=np.zeros((10, 12), np.int64), attention_mask=np.zeros((10, 9), np.int64))
    with pytest.raises(ConfigError, match=r"input 'attention_mask' has shape \[10, 9\]"):
        load_data(tmp_path / "t.npz", two)


def test_image_folder_and_function_sources(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    splits = load_data(tmp_path / "imgs", IMAGE, val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 10
    assert splits.train.inputs["image"].shape[1:] == (1, 16, 16) and splits.train.inputs["image"].max() <= 1.0
    assert set(np.concatenate([splits.train.labels, splits.val.labels])) == {0, 1}

    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.ones((6, 1, 16, 16), np.float32)\n"
        "    return (x, np.arange(6) % 2), {'image': x[:2], 'y': np.array([0, 1])}\n"
    )
    splits = load_data("mydata:load", IMAGE, base=tmp_path)
    assert len(splits.train) == 6 and len(splits.val) == 2 and splits.labeled


def _ws(workdir, tmp_path, factory, ckpt=None):
    return Workspace(model=ModelSpec(factory=factory, checkpoint=ckpt), inputs=IMAGE, output_names=["logits"],
                     data=DataSpec(source=str(workdir / "images.npz")), metric="accuracy", target="x86-avx2",
                     budget=Budget(), cache_dir=tmp_path / "cache", base_dir=workdir, quiet=True, bench_iterations=5)


def test_unexportable_model_names_the_operator_and_module(workdir, tmp_path):
    ws = _ws(workdir, tmp_path, "tiny_models:Unexportable")
    with pytest.raises(ExportError) as e:
        ws.run_chain([ExportConfig(exporter="torchscript")])
    msg = str(e.value)
    assert msg.startswith("cannot export the model to ONNX")
    assert "aten::linalg_eigvalsh" in msg and "module 'spectral' (Spectral)" in msg
    assert not list((tmp_path / "cache").glob(".tmp-*")), "a failed pass leaves no temporary folder"


def test_checkpoint_that_does_not_fit_and_bad_factory(workdir, tmp_path):
    import tiny_models as tm

    torch.save(tm.TinyResNet(width=4).state_dict(), tmp_path / "w4.pt")
    with pytest.raises(ConfigError, match=r"checkpoint .*w4.pt does not fit the model"):
        _ws(workdir, tmp_path, "tiny_models:TinyResNet", str(tmp_path / "w4.pt"))
    (tmp_path / "pickled.pt").write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="not a plain state dict"):
        _ws(workdir, tmp_path, "tiny_models:TinyResNet", str(tmp_path / "pickled.pt"))
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        _ws(workdir, tmp_path, "tiny_models:Nope")
    with pytest.raises(ConfigError, match=r"does not run on inputs image\[3, 1, 16, 16\]"):
        Workspace(model=ModelSpec(factory="tiny_models:Tiny1D"), inputs=IMAGE, output_names=None,
                  data=DataSpec(source=str(workdir / "images.npz")), metric="accuracy", target="x86-avx2",
                  budget=Budget(), cache_dir=tmp_path / "c2", base_dir=workdir, quiet=True)


def test_parity_failure_is_loud_and_leaves_no_artifact(workdir, tmp_path):
    from edgekit.errors import ParityError

    ws = _ws(workdir, tmp_path, "tiny_models:Drifting")
    with pytest.raises(ParityError, match=r"ONNX Runtime disagrees with PyTorch on output 'logits': \d+ of \d+ values"):
        ws.run_chain([ExportConfig(exporter="torchscript")])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [ws.source.root.name]

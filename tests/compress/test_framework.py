"""Artifacts, the cache (hit, atomic publish on interrupt), the registry and pickle-free torch storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekit.compress.artifact import Artifact
from edgekit.compress.cache import ArtifactCache, cache_key
from edgekit.compress.registry import PassConfig, config_type, pass_names, register_pass, run_pass
from edgekit.compress.torchio import load_module, save_module
from edgekit.errors import CompressError
from edgekit.manifest import TensorSpec

SPEC_IN = [TensorSpec(name="x", dtype="float32", shape=["batch", 4])]
SPEC_OUT = [TensorSpec(name="y", dtype="float32", shape=["batch", 2])]


def _art(d: Path, payload: bytes) -> Artifact:
    (d / "model.onnx").write_bytes(payload)
    return Artifact.create("onnx", d, ["model.onnx"], SPEC_IN, SPEC_OUT, {"format": "onnx"})


def test_artifact_hash_follows_content_and_roundtrips(tmp_path):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    a = _art(tmp_path / "a", b"one")
    b = _art(tmp_path / "b", b"one")
    c = _art(tmp_path / "c", b"two")
    assert a.sha256 == b.sha256 != c.sha256
    again = Artifact.load(tmp_path / "a", verify=True)
    assert again.sha256 == a.sha256 and again.inputs == a.inputs
    (tmp_path / "a" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(CompressError, match="does not match its recorded hash"):
        Artifact.load(tmp_path / "a", verify=True)


def test_cache_hit_and_interrupted_build_leaves_no_entry(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    key = cache_key("abc", "quantize", {"mode": "static"})
    assert cache_key("abc", "quantize", {"mode": "dynamic"}) != key
    calls = []

    def interrupted(tmp: Path):
        _art(tmp, b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a pass

    with pytest.raises(KeyboardInterrupt):
        cache.build(key, interrupted)
    assert cache.get(key) is None
    assert not list((tmp_path / "cache").iterdir()), "an interrupted pass must leave nothing behind"

    def good(tmp: Path):
        calls.append(1)
        return _art(tmp, b"full"), {"record": 1}

    art, rec = cache.build(key, good)
    hit = ArtifactCache(tmp_path / "cache").get(key)
    assert hit is not None and hit[0].sha256 == art.sha256 and hit[1] == {"record": 1}
    # A corrupted entry is a miss (and is removed), never a wrong model.
    (tmp_path / "cache" / key / "model.onnx").write_bytes(b"bitrot")
    assert cache.get(key) is None and not (tmp_path / "cache" / key).exists()


def test_registry_dispatches_on_config_type(tmp_path, monkeypatch):
    from edgekit.compress import registry

    registry.pass_names()  # load the built-ins, then register the test passes on private copies
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))

    class EchoConfig(PassConfig):
        pass_name = "echo-test"
        consumes = "onnx"
        factor: int = 2

    @register_pass(EchoConfig)
    def echo(art, cfg, ctx, out_dir):
        from edgekit.compress.registry import PassOutput

        return PassOutput(art, params={"factor": cfg.factor})

    assert "echo-test" in pass_names() and config_type("echo-test") is EchoConfig
    assert {"export", "quantize", "prune", "distill", "evaluate", "tensorrt"} <= set(pass_names())
    (tmp_path / "a").mkdir()
    art = _art(tmp_path / "a", b"m")
    assert run_pass(art, EchoConfig(factor=3), None, tmp_path).params == {"factor": 3}
    with pytest.raises(CompressError, match="unknown pass 'nope'"):
        config_type("nope")

    class BoomConfig(PassConfig):
        pass_name = "boom-test"

    @register_pass(BoomConfig)
    def boom(art, cfg, ctx, out_dir):
        raise RuntimeError("shape mismatch in user code\nlong traceback text")

    with pytest.raises(CompressError, match=r"^pass 'boom-test' failed: RuntimeError: shape mismatch in user code$"):
        run_pass(art, BoomConfig(), None, tmp_path)
    with pytest.raises(Exception, match="frozen"):
        EchoConfig().factor = 5  # configs are immutable


def test_pruned_module_roundtrips_without_pickle(tmp_path):
    import tiny_models as tm
    import torch_pruning as tp

    model = tm.TinyResNet(width=8).eval()
    x = torch.randn(2, 1, 16, 16)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    pruner.step()
    files = save_module(model, tmp_path, "tiny_models:TinyResNet", {"width": 8})
    art = Artifact.create("torch", tmp_path, files, [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16])],
                          [TensorSpec(name="logits", dtype="float32", shape=["batch", 4])], {"format": "factory"})
    # The weights are a plain tensor dict: loadable with the safe, pickle-free loader.
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    doc = json.loads((tmp_path / "structure.json").read_text())
    assert doc["modules"]["stem.0"]["out_channels"] == 4
    rebuilt = load_module(art)
    assert rebuilt.stem[0].out_channels == 4 and rebuilt.stem[0].weight.shape[0] == 4
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)

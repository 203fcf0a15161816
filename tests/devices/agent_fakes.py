"""Unit-test helpers: a manifest matching the fake runtime's default tensors, and loaded fake models."""

from __future__ import annotations

from devices.agent.host import LoadedModel
from edgekit.manifest import Manifest
from runtimes.fake import FakeSession


def fake_manifest(name: str = "fake", version: str = "1", **extra) -> Manifest:
    return Manifest.model_validate({
        "schema": 1, "name": name, "version": version,
        "files": {"model.onnx": {"sha256": "0" * 64, "size": 0}},
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": ["batch", 3]}],
        "labels": ["x", "y", "z"],
        **extra,
    })


def fake_model(version: str = "1", latency_ms: float = 0.0, **extra) -> LoadedModel:
    return LoadedModel(fake_manifest(version=version, **extra), FakeSession(latency_ms=latency_ms), runtime="fake")

"""Shared fixtures. Integration fixtures use real servers; a missing binary is a skip that names it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import MOSQUITTO, MosquittoServer  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path):
    """A real mosquitto broker on a free port; ``.stop()``/``.start()`` simulate an outage."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto); .ci/run installs it")
    with MosquittoServer(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory):
    """A generated bundle-signing key pair: ``(SigningKey, PublicKey, folder)``."""
    from edgekit.signing import generate_keypair, load_public_key, load_signing_key

    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d)
    return load_signing_key(priv), load_public_key(pub), d


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny CNN classifier as ONNX (input ``image`` [batch,1,8,8] → ``logits`` [batch,3]), built with
    the ``onnx`` helper API so tests of the agent side need no torch."""
    from onnx_models import tiny_cnn_onnx

    return tiny_cnn_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_onnx, signing_keys) -> Path:
    """A signed bundle of :func:`tiny_onnx` (``tiny@1.0.0``) with golden inputs and labels."""
    import numpy as np

    from edgekit.bundle import GoldenSet
    from runtimes.packaging import bundle_from_onnx

    key, _, _ = signing_keys
    d = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    golden_in = d / "golden-in.npz"
    golden_in.write_bytes(GoldenSet(inputs={"image": x}, outputs={}).to_npz_bytes())
    out = d / "tiny-1.0.0.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="1.0.0", key=key, out=out, golden_npz=golden_in,
                     labels=["a", "b", "c"])
    return out

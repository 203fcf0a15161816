"""Fixtures of the chaos scenarios: a persistent broker, signed bundle versions, a loss collector, and
a per-scenario record of what was measured (printed at the end of the run; also written to
``$EDGEKIT_CHAOS_REPORT`` as JSON lines when that is set)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

_RECORDS: list[dict] = []


@pytest.fixture
def chaos_record(request):
    """A dict the scenario fills with what it measured; reported whether the scenario passed or not."""
    rec: dict = {"scenario": request.node.name}
    yield rec
    _RECORDS.append(rec)
    out = os.environ.get("EDGEKIT_CHAOS_REPORT")
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")


def pytest_terminal_summary(terminalreporter):
    if _RECORDS:
        terminalreporter.section("chaos measurements")
        for rec in _RECORDS:
            terminalreporter.write_line(json.dumps(rec, default=str))


@pytest.fixture
def pbroker(tmp_path):
    """A persistent mosquitto (sessions and queued QoS 1 messages survive SIGKILL), as production needs."""
    from hil.broker import LocalMosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    with LocalMosquitto(tmp_path / "broker", persistent=True) as broker:
        yield broker


@pytest.fixture
def collector(pbroker):
    from hil.collector import WireCollector

    with WireCollector(pbroker.host, pbroker.port, keep_payloads=True) as col:
        yield col


@pytest.fixture(scope="session")
def versions(tmp_path_factory, tiny_onnx, signing_keys):
    """Signed bundles ``tiny@1.0.0`` (the seed), ``tiny@2.0.0`` and ``tiny@3.0.0`` of the tiny model."""
    from edgekit.bundle import GoldenSet
    from runtimes.packaging import bundle_from_onnx

    key, _, _ = signing_keys
    d = tmp_path_factory.mktemp("versions")
    x = np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32)
    g = d / "g.npz"
    g.write_bytes(GoldenSet(inputs={"image": x}, outputs={}).to_npz_bytes())
    out = {}
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        path = d / f"tiny-{v}.ekb"
        bundle_from_onnx(tiny_onnx, name="tiny", version=v, key=key, out=path, golden_npz=g, labels=["a", "b", "c"])
        out[v] = path
    return out

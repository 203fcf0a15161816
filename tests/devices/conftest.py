"""Fixtures of the agent's tests; helpers live in ``agent_testlib``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_testlib import FileServer, make_bundle  # noqa: E402


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, signing_keys):
    """Bundles: v1, v2 (other weights), bad-golden v3, and v9 signed by an untrusted key."""
    from edgekit.signing import generate_keypair, load_signing_key

    key, pub, keydir = signing_keys
    d = tmp_path_factory.mktemp("agent-bundles")
    other_priv, _ = generate_keypair(d / "other-key")
    return {
        "v1": make_bundle(d / "tiny-1.0.0.ekb", key, version="1.0.0", seed=0),
        "v2": make_bundle(d / "tiny-2.0.0.ekb", key, version="2.0.0", seed=1),
        "bad_golden": make_bundle(d / "tiny-3.0.0.ekb", key, version="3.0.0", seed=2, golden_shift=0.5),
        "untrusted": make_bundle(d / "tiny-9.0.0.ekb", load_signing_key(other_priv), version="9.0.0", seed=3),
        "pub": keydir / "signing.pub",
        "dir": d,
    }


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = FileServer(root)
    yield srv
    srv.close()


@pytest.fixture
def durable_broker(tmp_path):
    """A mosquitto that keeps sessions and queued messages across restarts (hil.broker, persistent), so a
    subscriber with a durable session misses nothing while the broker is down."""
    from hil.broker import LocalMosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    broker = LocalMosquitto(tmp_path / "durable-mosquitto", persistent=True)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def agent_factory(tmp_path, bundles):
    """Start in-process agents (real onnxruntime); all are stopped at the end of the test."""
    from devices.agent.agent import Agent
    from devices.agent.config import load_config

    started: list = []

    def start(state: Path | None = None, **overrides):
        ota = {"trusted_keys": [str(bundles["pub"])], "soak_s": 0.3}
        ota.update(overrides.pop("ota", {}))
        cfg = load_config(None, state_dir=str(state or tmp_path / "state"), profile="x86-avx2",
                          runtime_threads=1, server={"port": 0}, ota=ota, **overrides)
        agent = Agent(cfg).start()
        started.append(agent)
        return agent

    yield start
    for a in started:
        a.stop()  # idempotent

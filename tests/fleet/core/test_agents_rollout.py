"""Rollouts with several real device agents (in-process ``devices.agent.Agent``: real onnxruntime, real
MQTT through mosquitto, real HTTP downloads from the fleet's API), and a fleet manager restarted mid-way.

Covers: success across all waves; a device offline during its wave converging when it returns; a fleet
manager restart mid-rollout; a bad bundle (golden check fails on the device) halting the rollout at
wave 1 with only that wave rolled back.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from fleet.db.models import Device, RolloutDevice
from fleet.rollouts import RolloutSpec
from fleet.service import FleetService
from fleet.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

agent_mod = importlib.import_module("devices.agent.agent")


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def bad_golden_bundle(out: Path, key, tiny_onnx: Path, version: str) -> Path:
    """A correctly signed bundle whose golden outputs do not match its model: the device's check fails."""
    from edgekit.bundle import GoldenSet, create_bundle
    from runtimes.ort import OnnxRuntime

    x = np.random.default_rng(5).standard_normal((8, 1, 8, 8)).astype(np.float32)
    with OnnxRuntime().load(tiny_onnx, threads=1) as s:
        y = s.run({"image": x})["logits"]
    golden = GoldenSet(inputs={"image": x}, outputs={"logits": y + 0.5}, labels=y.argmax(axis=1))
    manifest = {
        "schema": 1, "name": "tiny", "version": version, "task": "classification",
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}],
        "labels": ["a", "b", "c"], "files": {},
    }
    create_bundle(out, manifest, {"model.onnx": tiny_onnx, "golden.npz": golden.to_npz_bytes()}, key)
    return out


class FleetUnderTest:
    """FleetService + the HTTP API under uvicorn in a thread; ``restart()`` is a new process's worth."""

    def __init__(self, settings):
        self.settings = settings
        self.service: FleetService | None = None
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self):
        import uvicorn

        from fleet.api import create_app

        self.service = FleetService(self.settings)
        ctx = self.service.start()
        app = create_app(ctx, public_downloads=True)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.settings.port,
                                                    log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "fleet HTTP API")
        return ctx

    @property
    def ctx(self):
        return self.service.ctx

    def stop(self):
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(15)
            self.server = None
        if self.service is not None:
            self.service.stop()
            self.service = None


@pytest.fixture
def fleet_env(tmp_path, mosquitto, signing_keys, bundles, tiny_onnx):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from servers import free_port

    key, pub, keydir = signing_keys
    settings = load_settings(data_dir=tmp_path / "fleet", broker_url=mosquitto.url, port=free_port(),
                             host="127.0.0.1", trusted_keys=[keydir / "signing.pub"], tick_interval_s=0.2,
                             ingest_flush_s=0.05, install_timeout_s=60)
    fut = FleetUnderTest(settings)
    ctx = fut.start()
    for v in ("1.0.0", "2.0.0"):
        ctx.registry.upload(bundles[v])
    bad = bad_golden_bundle(tmp_path / "tiny-3.0.0.ekb", key, tiny_onnx, "3.0.0")
    ctx.registry.upload(bad)
    agents: dict[str, object] = {}

    def start_agent(device_id: str):
        from devices.agent.config import load_config

        cfg = load_config(
            None, state_dir=str(tmp_path / "agents" / device_id), profile="x86-avx2", runtime_threads=1,
            bundle=str(bundles["1.0.0"]), server={"port": 0},
            mqtt={"url": mosquitto.url, "device_id": device_id, "telemetry_interval_s": 0.5, "tags": ["line-3"]},
            ota={"trusted_keys": [str(keydir / "signing.pub")], "soak_s": 0},
        )
        agents[device_id] = agent_mod.Agent(cfg).start()
        return agents[device_id]

    yield fut, agents, start_agent
    for a in agents.values():
        a.stop()
    fut.stop()


def serving(agent) -> str | None:
    m = agent.host.current
    return m.manifest.version if m else None


def members(ctx, rid):
    with ctx.database.session() as s:
        return {m.device_id: (m.wave, m.state)
                for m in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid))}


def test_rollouts_with_real_agents(fleet_env):
    fut, agents, start_agent = fleet_env
    ids = [f"agent-{i}" for i in range(4)]
    for i in ids:
        start_agent(i)

    def online(n):
        with fut.ctx.database.session() as s:
            return len(list(s.scalars(select(Device.id).where(Device.online.is_(True))))) == n

    wait_for(lambda: online(4), 30, "4 agents online in the fleet")

    # agent-3 goes offline before the rollout: its wave must not wait for it
    agents.pop("agent-3").stop()
    wait_for(lambda: online(3), 20, "agent-3 offline (graceful death)")

    st = fut.ctx.rollouts.create(RolloutSpec.build(bundle="tiny@2.0.0", selector="tag=line-3", waves="25,50,100",
                                                   soak_s="1s", max_p95_regression=5.0))
    rid = st.id
    assert [w.devices for w in st.waves] == [1, 1, 2]

    # restart the fleet manager once wave 1 has passed
    wait_for(lambda: fut.ctx.rollouts.status(rid).current_wave >= 1, 60, "wave 1 passed")
    assert fut.ctx.rollouts.status(rid).state == "running", "the restart happens mid-rollout"
    fut.stop()
    fut.start()
    final = wait_for(lambda: (s := fut.ctx.rollouts.status(rid)).state in ("completed", "halted") and s, 90,
                     "rollout to finish after the restart")
    assert final.state == "completed", final
    assert all(w.state == "passed" for w in final.waves)
    assert {serving(agents[i]) for i in ids[:3]} == {"2.0.0"}
    assert members(fut.ctx, rid)["agent-3"][1] == "desired", "the offline device has not installed yet"

    # agent-3 comes back: it converges to the rollout's version from its retained desired state
    a3 = start_agent("agent-3")
    wait_for(lambda: serving(a3) == "2.0.0", 30, "agent-3 converging to 2.0.0")
    wait_for(lambda: members(fut.ctx, rid)["agent-3"][1] == "installed", 20, "agent-3 counted installed")

    # a bad bundle: its golden check fails on the device; the rollout halts at wave 1 and rolls it back
    bad = fut.ctx.rollouts.create(RolloutSpec.build(bundle="tiny@3.0.0", selector="tag=line-3", waves="25,100",
                                                    soak_s="1s"))
    halted = wait_for(lambda: (s := fut.ctx.rollouts.status(bad.id)).state != "running" and s, 60, "bad rollout halt")
    assert halted.state == "halted", halted
    assert "wave 1" in halted.reason
    assert [w.state for w in halted.waves] == ["failed", "pending"]
    m = members(fut.ctx, bad.id)
    wave1 = [d for d, (w, _) in m.items() if w == 0]
    assert len(wave1) == 1 and m[wave1[0]][1] == "rolled_back"
    with fut.ctx.database.session() as s:
        desired = {d.id: d.desired_version for d in s.scalars(select(Device))}
    assert desired == dict.fromkeys(ids, "2.0.0"), "wave 1 set back to 2.0.0; wave 2 never told about 3.0.0"
    time.sleep(1.0)
    assert {serving(a) for a in agents.values()} == {"2.0.0"}, "nobody serves the bad bundle"

"""Chaos: the fleet manager (``edgekit fleet up``) is SIGKILLed in the middle of a staged rollout.

Guarantees checked: after a restart the rollout resumes and ends in a defined state (``completed``
here, since every gate passes); every device ends on a verified model (the new one); nothing the
devices published is lost at the broker. What the fleet's own database missed while it was down is
checked separately (``test_fleet_db_has_every_seq_after_fleet_kill``: the ingest's persistent session
makes the broker queue what arrives while the fleet is down).
"""

from __future__ import annotations

import time

import pytest
from chaoskit import AgentProcess, FleetProcess, long_mode, wait_until
from test_chaos_broker import spool_state

from edgekit.wire import ModelRef
from hil.simscript import SimScript
from hil.simulator import SimConfig, Simulator, SimulatorThread

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def _fleet_seqs(fleet: FleetProcess) -> dict[str, set[int]]:
    import sqlite3

    db = sqlite3.connect(fleet.data / "fleet.db")
    try:
        got: dict[str, set[int]] = {}
        for table in ("telemetry", "events"):
            for dev, seq in db.execute(f"SELECT device_id, seq FROM {table}"):  # noqa: S608 - fixed names
                got.setdefault(dev, set()).add(seq)
    finally:
        db.close()
    return got


@pytest.fixture(scope="module")
def rollout_under_fire(tmp_path_factory, versions, signing_keys):
    """Run the scenario once (module scope); the tests below check different guarantees of the same run."""
    from hil.broker import LocalMosquitto, mosquitto_binary
    from hil.collector import WireCollector

    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    tmp_path = tmp_path_factory.mktemp("fleet-chaos")
    with LocalMosquitto(tmp_path / "broker", persistent=True) as pbroker, \
            WireCollector(pbroker.host, pbroker.port) as collector:
        out = _scenario(pbroker, collector, versions, signing_keys, tmp_path)
        out["broker_missing"] = collector.wait_complete(out["last_seq"], timeout=20, exclude={"agent-0": out["held"]})
        out["agent_reported"] = collector.reported.get("agent-0")
    return out


def _scenario(pbroker, collector, versions, signing_keys, tmp_path) -> dict:
    _, _, keydir = signing_keys
    n_sim = 100 if long_mode() else 20
    fleet = FleetProcess(tmp_path / "fleet", broker_url=pbroker.url, keys_dir=keydir).start()
    script = SimScript.model_validate({"initial_model": {"name": "tiny", "version": "1.0.0"},
                                       "ota": {"step_s": 0.2, "soak_s": 0.5}, "tags": ["group=chaos"]})
    sim = SimulatorThread(Simulator(SimConfig(broker_url=pbroker.url, devices=n_sim, telemetry_interval_s=0.5,
                                              trusted_keys=[keydir / "signing.pub"], fleet_url=fleet.url,
                                              profile="x86-avx2", drain_s=15), script)).start()
    agent = AgentProcess(tmp_path / "agent", broker_url=pbroker.url, device_id="agent-0", seed=versions["1.0.0"],
                         keys_dir=keydir, soak_s=0.5, telemetry_interval_s=0.5).start()
    out: dict = {"n": n_sim + 1}
    try:
        with fleet.client() as c:
            c.push(versions["1.0.0"])
            c.push(versions["2.0.0"])
        assert agent.wait_ready(60), agent.tail()
        assert wait_until(lambda: len([d for d in fleet.client().devices() if d["online"]]) == n_sim + 1, timeout=60)
        with fleet.client() as c:
            st = c.create_rollout({"bundle": "tiny@2.0.0", "selector": "all", "waves": [10, 50, 100], "soak_s": 2.0,
                                   "max_failure_rate": 0.5, "max_p95_regression": 5.0, "max_confidence_drop": 1.0,
                                   "install_timeout_s": 120.0})
        rid = st["id"]
        # kill while a later wave is in progress: some devices updated, others not yet
        assert wait_until(lambda: fleet.client().rollout(rid)["current_wave"] >= 1, timeout=60), fleet.tail()
        out["at_kill"] = {k: fleet.client().rollout(rid)[k] for k in ("state", "current_wave")}
        fleet.kill()
        time.sleep(3.0)  # devices keep publishing to the broker while the fleet is gone
        fleet.start()
        assert wait_until(lambda: fleet.client().rollout(rid)["state"] in ("completed", "halted", "aborted"),
                          timeout=120), fleet.tail()
        out["rollout"] = fleet.client().rollout(rid)
        assert sim.wait_for(lambda s: all(d.ota.state in ("installed", "failed", "rolled_back") and not d.ota.soaking
                                          for d in s.devices), timeout=60)
        assert wait_until(lambda: agent.served_version("tiny") == "2.0.0", timeout=60)
        time.sleep(1.0)
    finally:
        out["sim"] = sim.stop()
        agent.stop()
        time.sleep(1.5)  # the fleet's ingest writes what it already received
        out["fleet_seqs"] = _fleet_seqs(fleet) if (fleet.data / "fleet.db").exists() else {}
        fleet.stop()
    last, evicted, held = spool_state(agent)
    out["held"] = held
    out["last_seq"] = dict(out["sim"].last_seq) | {"agent-0": last}
    out["agent_evicted"] = evicted
    out["models"] = dict(out["sim"].models)
    return out


def test_fleet_killed_mid_rollout_rollout_completes(rollout_under_fire, chaos_record):
    run = rollout_under_fire
    missing = run["broker_missing"]
    roll = run["rollout"]
    chaos_record.update(devices=run["n"], at_kill=run["at_kill"], final_state=roll["state"], reason=roll.get("reason"),
                        waves=[(w["state"], w["installed"], w["failed"]) for w in roll["waves"]],
                        models=run["models"], broker_missing=sum(map(len, missing.values())))
    assert roll["state"] == "completed", roll
    assert run["models"] == {"tiny@2.0.0": run["n"] - 1}
    assert run["agent_reported"].active == ModelRef(name="tiny", version="2.0.0")
    assert missing == {} and run["agent_evicted"] == 0


def test_fleet_db_has_every_seq_after_fleet_kill(rollout_under_fire, chaos_record):
    """What the devices published while the fleet manager was down, and what it had received but not yet
    written when it was killed, must reach its database after it restarts (persistent ingest session, PUBACK
    only after the batch commits: b9cef28)."""
    run = rollout_under_fire
    got = run["fleet_seqs"]
    held = {"agent-0": run["held"]}  # still in the agent's durable spool: not lost, not yet sent
    gaps = {d: [s for s in range(1, last + 1) if s not in got.get(d, set()) and s not in held.get(d, set())]
            for d, last in run["last_seq"].items()}
    gaps = {d: g for d, g in gaps.items() if g}
    chaos_record.update(devices=run["n"], fleet_db_missing=sum(map(len, gaps.values())),
                        devices_with_gaps=len(gaps), example=next(iter(gaps.items()), None))
    assert gaps == {}, f"the fleet database misses {sum(map(len, gaps.values()))} seqs of {len(gaps)} devices"


def test_broker_killed_while_the_fleet_drives_a_rollout(pbroker, collector, versions, signing_keys, tmp_path,
                                                        chaos_record):
    """The fleet's desired-state outbox and ingest ride out a broker crash in the middle of a wave."""
    from test_chaos_broker import classify_loss, kill_restart

    _, _, keydir = signing_keys
    n_sim = 100 if long_mode() else 20
    fleet = FleetProcess(tmp_path / "fleet", broker_url=pbroker.url, keys_dir=keydir).start()
    script = SimScript.model_validate({"initial_model": {"name": "tiny", "version": "1.0.0"},
                                       "ota": {"step_s": 0.2, "soak_s": 0.5}})
    sim = SimulatorThread(Simulator(SimConfig(broker_url=pbroker.url, devices=n_sim, telemetry_interval_s=0.5,
                                              trusted_keys=[keydir / "signing.pub"], fleet_url=fleet.url,
                                              profile="x86-avx2", drain_s=15, track_acks=True), script)).start()
    agent = AgentProcess(tmp_path / "agent", broker_url=pbroker.url, device_id="agent-0", seed=versions["1.0.0"],
                         keys_dir=keydir, soak_s=0.5, telemetry_interval_s=0.5).start()
    try:
        with fleet.client() as c:
            c.push(versions["1.0.0"])
            c.push(versions["2.0.0"])
        assert agent.wait_ready(60), agent.tail()
        assert wait_until(lambda: len([d for d in fleet.client().devices() if d["online"]]) == n_sim + 1, timeout=60)
        with fleet.client() as c:
            rid = c.create_rollout({"bundle": "tiny@2.0.0", "selector": "all", "waves": [10, 50, 100], "soak_s": 2.0,
                                    "max_failure_rate": 0.5, "max_p95_regression": 5.0, "max_confidence_drop": 1.0,
                                    "install_timeout_s": 120.0})["id"]
        assert wait_until(lambda: fleet.client().rollout(rid)["current_wave"] >= 1, timeout=60), fleet.tail()
        at_kill = {k: fleet.client().rollout(rid)[k] for k in ("state", "current_wave")}
        kill_at = kill_restart(pbroker, 2.0)
        assert wait_until(lambda: fleet.client().rollout(rid)["state"] in ("completed", "halted", "aborted"),
                          timeout=120), fleet.tail()
        roll = fleet.client().rollout(rid)
        assert sim.wait_for(lambda s: all(d.ota.state in ("installed", "failed", "rolled_back") and not d.ota.soaking
                                          for d in s.devices), timeout=60)
        assert wait_until(lambda: agent.served_version("tiny") == "2.0.0", timeout=60), agent.tail()
    finally:
        report = sim.stop()
        agent.stop()
        fleet.stop()
    last, evicted, held = spool_state(agent)
    seqs = dict(report.last_seq) | {"agent-0": last}
    missing = collector.wait_complete(seqs, timeout=20, exclude={"agent-0": held})
    by_broker, unexplained = classify_loss(missing, sim.sim, collector, [kill_at])
    chaos_record.update(devices=n_sim + 1, at_kill=at_kill, final_state=roll["state"], reason=roll.get("reason"),
                        waves=[(w["state"], w["installed"], w["failed"]) for w in roll["waves"]],
                        models=report.models, lost_by_broker_after_puback=by_broker,
                        unexplained=sum(map(len, unexplained.values())))
    assert roll["state"] == "completed", roll
    assert report.models == {"tiny@2.0.0": n_sim}
    assert unexplained == {} and evicted == 0, unexplained

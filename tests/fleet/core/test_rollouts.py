"""Unit tests of the rollout state machine: fake clock and publisher, simulated devices, real SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from edgekit.errors import RolloutError
from fleet.db.models import RolloutDevice
from fleet.rollouts import RolloutManager, RolloutSpec


def members(db, rid: str) -> dict[int, list[str]]:
    with db.session() as s:
        out: dict[int, list[str]] = {}
        for m in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)):
            out.setdefault(m.wave, []).append(m.device_id)
        return {k: sorted(v) for k, v in out.items()}


def member_states(db, rid: str) -> dict[str, str]:
    with db.session() as s:
        return {m.device_id: m.state for m in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid))}


def make_fleet(fleet, n: int, **kw) -> list[str]:
    ids = [f"dev-{i:02d}" for i in range(n)]
    for i in ids:
        fleet.add(i, tags=["line-3"], **kw)
        for _ in range(3):  # baseline on the previous version
            fleet.telemetry(i, p95=10.0, confidence=0.9)
    fleet.clock.advance(10)
    return ids


def step(manager, fleet, clock, *, p95_by_version=None, seconds=30.0):
    """One round: tick, devices act on desired state, devices send telemetry, time passes."""
    p95_by_version = p95_by_version or {}
    manager.tick()
    fleet.converge()
    clock.advance(seconds / 2)
    for d in fleet.devices.values():
        if d.online:
            fleet.telemetry(d.id, p95=p95_by_version.get(fleet.version_of(d.id), 10.0))
    clock.advance(seconds / 2)
    manager.tick()


def run_until(manager, fleet, clock, rid, states=("completed", "halted", "aborted"), max_steps=60, **kw):
    for _ in range(max_steps):
        st = manager.status(rid)
        if st.state in states:
            return st
        step(manager, fleet, clock, **kw)
    return manager.status(rid)


def spec(**kw) -> RolloutSpec:
    base = dict(bundle="tiny@2.0.0", selector="tag=line-3", waves="10,50,100", soak_s="60s",
                max_failure_rate=0.02, max_p95_regression=0.2)
    base.update(kw)
    return RolloutSpec.build(**base)


def test_rollout_succeeds_across_all_waves(manager, fleet, clock, db, publisher):
    ids = make_fleet(fleet, 10)
    st = manager.create(spec())
    assert [w.devices for w in st.waves] == [1, 4, 5]
    assert all(w.state == "pending" for w in st.waves)

    manager.tick()
    first = members(db, st.id)[0]
    assert set(publisher.retained) == set(first), "only wave 1 gets desired state at first"
    d = publisher.retained[first[0]]
    assert (d.bundle.name, d.bundle.version, d.rollout_id) == ("tiny", "2.0.0", st.id)
    assert d.bundle.url == "http://fleet.test:8080/api/v1/bundles/tiny/2.0.0/download"
    assert d.generation == 1 and len(d.bundle.sha256) == 64

    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed", final
    assert [w.state for w in final.waves] == ["passed"] * 3
    assert all(w.gate and w.gate["passed"] for w in final.waves)
    assert final.waves[0].gate["p95_devices"] == 1 and final.waves[0].gate["p95_regression"] == pytest.approx(0)
    assert {fleet.version_of(i) for i in ids} == {"2.0.0"}
    assert set(member_states(db, st.id).values()) == {"installed"}
    # waves are sequential: wave 2 started only after wave 1's soak
    assert final.waves[1].started_at >= final.waves[0].soak_started_at + timedelta(seconds=60)


def test_latency_regression_halts_and_rolls_back_first_wave_only(manager, fleet, clock, db, publisher):
    ids = make_fleet(fleet, 10)
    st = manager.create(spec(bundle="tiny@3.0.0"))
    final = run_until(manager, fleet, clock, st.id, p95_by_version={"3.0.0": 30.0})
    assert final.state == "halted"
    assert "p95 latency" in final.reason and "wave 1" in final.reason
    assert [w.state for w in final.waves] == ["failed", "pending", "pending"]
    wave1 = members(db, st.id)[0]
    # the first wave's devices were told to go back to 1.0.0; nobody else was ever told anything
    assert set(publisher.retained) == set(wave1)
    assert {publisher.retained[i].bundle.version for i in wave1} == {"1.0.0"}
    fleet.converge()
    assert {fleet.version_of(i) for i in ids} == {"1.0.0"}
    assert set(member_states(db, st.id)[i] for i in wave1) == {"rolled_back"}
    # a halted rollout stays halted
    for _ in range(3):
        step(manager, fleet, clock)
    assert manager.status(st.id).state == "halted"
    assert set(publisher.retained) == set(wave1)


def test_a_wave_on_a_bundle_the_registry_never_had_is_rolled_back_by_the_device(manager, fleet, clock, db,
                                                                                  publisher):
    """Devices that booted from a local seed bundle get an explicit rollback, not a cleared desired state."""
    make_fleet(fleet, 10, model=("seed", "0.1.0"))
    st = manager.create(spec(bundle="tiny@3.0.0"))
    final = run_until(manager, fleet, clock, st.id, p95_by_version={"3.0.0": 30.0, "0.1.0": 10.0})
    assert final.state == "halted"
    wave1 = members(db, st.id)[0]
    assert set(publisher.retained) == set(wave1)
    for i in wave1:
        d = publisher.retained[i]
        assert d.action == "rollback" and (d.bundle.name, d.bundle.version) == ("tiny", "3.0.0")
    assert set(member_states(db, st.id)[i] for i in wave1) == {"rolled_back"}


def test_golden_failure_halts_at_install_and_rolls_back(manager, fleet, clock, db, publisher):
    ids = make_fleet(fleet, 10)
    for i in ids:
        fleet.devices[i].behaviour["3.0.0"] = "golden"
    st = manager.create(spec(bundle="tiny@3.0.0", waves="20,100"))
    manager.tick()
    fleet.converge()
    manager.tick()
    final = manager.status(st.id)
    assert final.state == "halted"
    assert "failed to install" in final.reason and "golden" in final.reason
    assert final.waves[0].failed == 0 and final.waves[0].rolled_back == 2
    assert final.waves[1].state == "pending"


def test_error_rate_gate(manager, fleet, clock, db):
    make_fleet(fleet, 4)
    st = manager.create(spec(bundle="tiny@3.0.0", waves="50,100"))
    manager.tick()
    fleet.converge()
    manager.tick()
    assert manager.status(st.id).waves[0].state == "soaking"
    for i in members(db, st.id)[0]:
        fleet.telemetry(i, p95=10.0, requests=100, errors=10)
    clock.advance(61)
    manager.tick()
    final = manager.status(st.id)
    assert final.state == "halted" and "error rate" in final.reason
    assert final.waves[0].gate["error_rate"] == pytest.approx(0.1)


def test_gate_windows_use_the_fleets_receive_time_not_the_device_clock(manager, fleet, clock, db):
    """A board with no real-time clock stamps 1970 until NTP: its soak-window telemetry still counts."""
    from datetime import datetime, timezone

    make_fleet(fleet, 4)
    st = manager.create(spec(bundle="tiny@3.0.0", waves="50,100"))
    manager.tick()
    fleet.converge()
    manager.tick()
    for i in members(db, st.id)[0]:
        fleet.telemetry(i, p95=10.0, requests=100, errors=10, device_ts=datetime(1970, 1, 1, tzinfo=timezone.utc))
    clock.advance(61)
    manager.tick()
    final = manager.status(st.id)
    assert final.state == "halted" and "error rate" in final.reason


def test_drift_confidence_drop_fails_gate(manager, fleet, clock, db):
    make_fleet(fleet, 4)
    st = manager.create(spec(bundle="tiny@3.0.0", waves="50,100"))
    manager.tick()
    fleet.converge()
    manager.tick()
    for i in members(db, st.id)[0]:
        fleet.telemetry(i, p95=10.0, confidence=0.4)
    clock.advance(61)
    manager.tick()
    final = manager.status(st.id)
    assert final.state == "halted" and "confidence" in final.reason


def test_pause_resume_abort(manager, fleet, clock, db, publisher):
    make_fleet(fleet, 10)
    st = manager.create(spec())
    manager.tick()
    fleet.converge()
    manager.tick()
    assert manager.status(st.id).waves[0].state == "soaking"
    manager.pause(st.id)
    with pytest.raises(RolloutError, match="paused"):
        manager.pause(st.id)
    clock.advance(3600)
    manager.tick()
    assert manager.status(st.id).waves[0].state == "soaking", "a paused rollout takes no gate"
    manager.resume(st.id)
    with pytest.raises(RolloutError, match="running"):
        manager.resume(st.id)
    manager.tick()
    st2 = manager.status(st.id)
    assert st2.waves[0].state == "passed" and st2.waves[1].state == "installing"
    wave2 = members(db, st.id)[1]
    fleet.converge()
    manager.abort(st.id, reason="operator changed their mind")
    final = manager.status(st.id)
    assert final.state == "aborted" and final.reason == "operator changed their mind"
    assert final.waves[1].state == "failed" and final.waves[2].state == "pending"
    fleet.converge()
    wave1 = members(db, st.id)[0]
    assert {fleet.version_of(i) for i in wave1} == {"2.0.0"}, "finished waves keep the new version"
    assert {fleet.version_of(i) for i in wave2} == {"1.0.0"}, "the wave in flight is rolled back"
    with pytest.raises(RolloutError, match="aborted"):
        manager.abort(st.id)
    with pytest.raises(RolloutError, match="no rollout"):
        manager.status("r-missing")


def test_restart_mid_wave_resumes_from_database(db, registry, fleet, clock, publisher):
    make_fleet(fleet, 10)
    first = RolloutManager(db, registry, publisher, clock=clock)
    st = first.create(spec())
    step(first, fleet, clock)
    step(first, fleet, clock)
    step(first, fleet, clock)
    assert first.status(st.id).waves[0].state == "passed"
    assert first.status(st.id).waves[1].state == "installing"
    wave2 = members(db, st.id)[1]
    assert all(publisher.retained[i].bundle.version == "2.0.0" for i in wave2)
    fleet.converge()  # wave 2 installs while the fleet manager is down
    del first
    second = RolloutManager(db, registry, publisher, clock=clock)  # a new process: state only from the DB
    second.tick()
    assert second.status(st.id).waves[1].state == "soaking"
    assert second.status(st.id).waves[1].installed == len(wave2)
    final = run_until(second, fleet, clock, st.id)
    assert final.state == "completed"
    assert {fleet.version_of(i) for i in fleet.devices} == {"2.0.0"}


def test_outbox_republishes_after_broker_outage(manager, fleet, clock, db, publisher):
    make_fleet(fleet, 2)
    st = manager.create(spec(waves="100"))
    publisher.down = True
    manager.tick()
    assert publisher.retained == {}
    assert manager.status(st.id).waves[0].state == "installing"
    # a fresh manager (restart) while the broker is back publishes what was never acknowledged
    publisher.down = False
    fresh = RolloutManager(db, manager.registry, publisher, clock=clock)
    fresh.tick()
    assert set(publisher.retained) == set(fleet.devices)
    final = run_until(fresh, fleet, clock, st.id)
    assert final.state == "completed"


def test_offline_device_converges_when_it_returns(manager, fleet, clock, db, publisher):
    make_fleet(fleet, 4)
    st = manager.create(spec(waves="50,100"))
    manager.tick()
    late, ontime = members(db, st.id)[0]
    fleet.down(late)  # goes away before acting on its desired state
    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed", "an offline device does not hold its wave up"
    assert fleet.version_of(late) == "1.0.0" and fleet.version_of(ontime) == "2.0.0"
    assert member_states(db, st.id)[late] == "desired"
    fleet.up(late)  # back: the retained desired state is waiting for it
    assert fleet.converge() == [late]
    manager.tick()
    assert fleet.version_of(late) == "2.0.0"
    assert member_states(db, st.id)[late] == "installed"


def test_device_joining_mid_rollout_gets_the_new_version(manager, fleet, clock, db):
    make_fleet(fleet, 4)
    st = manager.create(spec(waves="50,100"))
    step(manager, fleet, clock)
    clock.advance(1)
    fleet.add("newcomer", tags=["line-3"])
    fleet.add("other-line", tags=["line-4"])
    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed"
    assert "newcomer" in members(db, st.id)[1]
    assert fleet.version_of("newcomer") == "2.0.0"
    assert fleet.version_of("other-line") == "1.0.0"
    # after completion, a new matching device is brought to the rollout's version directly
    clock.advance(1)
    fleet.add("late-joiner", tags=["line-3"])
    manager.tick()
    fleet.converge()
    assert fleet.version_of("late-joiner") == "2.0.0"


def test_create_refuses_bad_requests(manager, fleet):
    make_fleet(fleet, 2)
    with pytest.raises(RolloutError, match="no bundle tiny@9"):
        manager.create(spec(bundle="tiny@9.9.9"))
    with pytest.raises(RolloutError, match="matches no device"):
        manager.create(spec(selector="tag=nowhere"))
    with pytest.raises(RolloutError, match="strictly increase"):
        spec(waves="50,10,100")
    with pytest.raises(RolloutError, match="last wave must be 100"):
        spec(waves="10,50")
    with pytest.raises(RolloutError, match="duration"):
        spec(soak_s="five minutes")
    with pytest.raises(RolloutError, match="NAME@VERSION"):
        spec(bundle="tiny")
    with pytest.raises(RolloutError, match="unknown key 'colour'"):
        spec(selector="colour=red")
    manager.create(spec())
    with pytest.raises(RolloutError, match="another running or paused rollout"):
        manager.create(spec(bundle="tiny@3.0.0"))


def test_offline_devices_move_behind_online_ones_at_wave_start(manager, fleet, clock, db, publisher):
    make_fleet(fleet, 4)
    st = manager.create(spec(waves="50,100"))
    planned = members(db, st.id)
    for i in planned[0]:
        fleet.down(i)  # the whole first wave is unreachable when it would start
    manager.tick()
    now = members(db, st.id)
    assert now[0] == planned[1] and now[1] == planned[0], "online devices take the first wave"
    assert set(publisher.retained) == set(planned[1])
    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed"
    assert {fleet.version_of(i) for i in planned[1]} == {"2.0.0"}
    assert {fleet.version_of(i) for i in planned[0]} == {"1.0.0"}
    for i in planned[0]:
        fleet.up(i)
    fleet.converge()
    manager.tick()
    assert {fleet.version_of(i) for i in fleet.devices} == {"2.0.0"}
    assert set(member_states(db, st.id).values()) == {"installed"}


def test_a_rollout_never_passes_without_any_signal(manager, fleet, clock, db, publisher):
    ids = make_fleet(fleet, 2)
    for i in ids:
        fleet.down(i)
    st = manager.create(spec(waves="50,100"))
    for _ in range(5):
        step(manager, fleet, clock, seconds=120)
    now = manager.status(st.id)
    assert now.state == "running" and now.waves[0].state == "installing", "no evidence: the wave waits"
    second = members(db, st.id)[1][0]
    fleet.up(second)  # a device of the *second* wave comes back first: it takes the first wave's place
    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed"
    assert members(db, st.id)[0] == [second]
    assert fleet.version_of(second) == "2.0.0"
    assert "offline" in final.waves[1].gate["note"]


def test_desired_state_is_republished_on_request_and_the_adoption_is_newest_first(manager, fleet, clock, db,
                                                                                   publisher):
    make_fleet(fleet, 2)
    st = manager.create(spec(waves="100"))
    final = run_until(manager, fleet, clock, st.id)
    assert final.state == "completed"
    publisher.retained.clear()  # e.g. a broker restarted without persistence lost the retained messages
    for d in fleet.devices:
        manager.republish(d)
    manager.tick()
    assert {d.bundle.version for d in publisher.retained.values()} == {"2.0.0"}
    assert len(publisher.retained) == 2
    # a newer completed rollout of the same devices adopts late joiners, the older one does not
    st2 = manager.create(spec(bundle="tiny@3.0.0", waves="100"))
    assert run_until(manager, fleet, clock, st2.id).state == "completed"
    clock.advance(1)
    fleet.add("joiner", tags=["line-3"])
    manager.tick()
    assert members(db, st2.id)[0].count("joiner") == 1
    assert "joiner" not in members(db, st.id)[0]
    assert publisher.retained["joiner"].bundle.version == "3.0.0"


def test_a_rejected_desired_state_counts_as_an_install_failure(manager, fleet, clock, db):
    make_fleet(fleet, 4)
    st = manager.create(spec(waves="50,100"))
    manager.tick()
    victim = members(db, st.id)[0][0]
    fleet.event(victim, "desired.rejected", level="warning", rollout_id=st.id,
                message="bundle URL is not under an allowed prefix")
    manager.tick()
    final = manager.status(st.id)
    assert final.state == "halted" and "desired.rejected" in final.reason


def test_pipelined_outbox_retries_what_the_broker_did_not_acknowledge(db, registry, fleet, clock, publisher):
    class Lossy(type(publisher)):
        """Publishes many at once; the first call's second half is never acknowledged."""

        calls = 0

        def publish_many(self, items):
            Lossy.calls += 1
            keep = items if Lossy.calls > 1 else items[: len(items) // 2]
            for device_id, desired in keep:
                self.publish(device_id, desired)
            return {d for d, _ in keep}

    lossy = Lossy()
    make_fleet(fleet, 4)
    manager = RolloutManager(db, registry, lossy, clock=clock)
    manager.create(spec(waves="100"))
    manager.tick()
    assert len(lossy.retained) == 2
    manager.tick()
    assert len(lossy.retained) == 4 and Lossy.calls == 2
    manager.tick()
    assert Lossy.calls == 2, "nothing left to publish"

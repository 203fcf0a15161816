"""Rollout endpoints drive the persisted state machine: create, status with waves and gates, pause,
resume, abort; illegal transitions are 409, bad definitions 422, unknown rollouts 404."""

from __future__ import annotations

import pytest

from edgekit import wire

#: run on SQLite and on the real PostgreSQL server (skipped, naming what is missing, without one)
BOTH_DATABASES = pytest.mark.parametrize(
    "fleet_db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True)


V1 = wire.ModelRef(name="tiny", version="1.0.0")
V2 = wire.ModelRef(name="tiny", version="2.0.0")
DEVICES = ["cam-1", "cam-2", "cam-3", "cam-4"]


@pytest.fixture
def fleet(client, admin_h, feed, fleet_ctx, tiny_bundle, bundle_v2):
    """Two registered versions; four online devices on 1.0.0 with some baseline telemetry."""
    for b in (tiny_bundle, bundle_v2):
        files = {"file": (b.name, b.read_bytes())}
        assert client.post("/api/v1/bundles", files=files, headers=admin_h).status_code == 201
    clock = fleet_ctx.test_clock
    feed(*[wire.Status(device_id=d, state="online", profile="x86-avx2", model=V1, ts=clock()) for d in DEVICES])
    feed(*[wire.Reported(device_id=d, active=V1, ota_state="installed", ts=clock()) for d in DEVICES])
    seq = {d: 0 for d in DEVICES}
    telemetry(feed, clock, seq, DEVICES, V1, p95=2.0)
    clock.advance(10)
    return seq


def telemetry(feed, clock, seq, devices, model, *, p95, n=3):
    for _ in range(n):
        feed(*[wire.Telemetry(device_id=d, seq=seq[d], ts=clock(), model=model, requests=100, errors=0,
                              latency=wire.LatencyStats(p50_ms=p95 / 2, p95_ms=p95),
                              drift=wire.DriftStats(confidence_mean=0.9))
               for d in devices])
        for d in devices:
            seq[d] += 1
        clock.advance(1)


def install(feed, fleet_ctx, rollout_id, devices):
    """Each device reports the desired version installed, with the generation it was sent."""
    with fleet_ctx.database.session() as s:
        from fleet.db.models import Device

        gens = {d: s.get(Device, d).desired_generation for d in devices}
    feed(*[wire.Reported(device_id=d, active=V2, previous=V1, ota_state="installed", rollout_id=rollout_id,
                         generation=gens[d], ts=fleet_ctx.test_clock()) for d in devices])


def wave_devices(client, h, rid, wave):
    rows = client.get(f"/api/v1/rollouts/{rid}/devices", headers=h).json()["devices"]
    return [r["device_id"] for r in rows if r["wave"] == wave]


def create(client, h, **kw):
    body = {"bundle": "tiny@2.0.0", "selector": "all", "waves": "50,100", "soak_s": "30s", **kw}
    return client.post("/api/v1/rollouts", json=body, headers=h)


@BOTH_DATABASES
def test_rollout_succeeds_across_waves(client, admin_h, read_h, fleet, feed, fleet_ctx):
    r = create(client, admin_h)
    assert r.status_code == 201, r.text
    st = r.json()
    rid = st["id"]
    assert st["state"] == "running" and [w["devices"] for w in st["waves"]] == [2, 2]
    assert st["created_by"].startswith("token:test-admin")

    ctx, clock, seq = fleet_ctx, fleet_ctx.test_clock, fleet
    for wave in (0, 1):
        ctx.rollouts.tick()
        st = client.get(f"/api/v1/rollouts/{rid}", headers=read_h).json()
        assert st["current_wave"] == wave and st["waves"][wave]["state"] == "installing"
        members = wave_devices(client, read_h, rid, wave)
        sent = {d for d, desired in ctx.publisher.sent if desired is not None and desired.bundle.version == "2.0.0"}
        assert set(members) <= sent
        install(feed, ctx, rid, members)
        ctx.rollouts.tick()
        st = client.get(f"/api/v1/rollouts/{rid}", headers=read_h).json()
        assert st["waves"][wave]["state"] == "soaking" and st["waves"][wave]["installed"] == 2
        telemetry(feed, clock, seq, members, V2, p95=2.1)
        clock.advance(31)
        ctx.rollouts.tick()
        st = client.get(f"/api/v1/rollouts/{rid}", headers=read_h).json()
        gate = st["waves"][wave]["gate"]
        assert st["waves"][wave]["state"] == "passed" and gate["passed"] is True
        assert gate["p95_previous_ms"] == pytest.approx(2.0) and gate["p95_new_ms"] == pytest.approx(2.1)
    assert st["state"] == "completed"
    charts = client.get(f"/api/v1/rollouts/{rid}/telemetry", params={"bucket_s": 3600}, headers=read_h).json()
    assert [w["index"] for w in charts["waves"]] == [0, 1]
    for w in charts["waves"]:
        assert set(w["series"]) == {"tiny@1.0.0", "tiny@2.0.0"}  # before and after, same devices
        for model, p95 in (("tiny@1.0.0", 2.0), ("tiny@2.0.0", 2.1)):
            buckets = w["series"][model]  # wall-clock buckets: the points may straddle a boundary
            assert sum(b["samples"] for b in buckets) == 6  # 2 devices x 3 intervals each
            assert all(b["p95_ms"] == pytest.approx(p95) for b in buckets)
    assert client.get("/api/v1/rollouts/r-nope/telemetry", headers=read_h).status_code == 404
    assert [x["id"] for x in client.get("/api/v1/rollouts", headers=read_h).json()] == [rid]
    assert client.get("/api/v1/rollouts", params={"state": "halted"}, headers=read_h).json() == []
    # a finished rollout can no longer be paused, resumed or aborted
    for verb in ("pause", "resume", "abort"):
        bad = client.post(f"/api/v1/rollouts/{rid}/{verb}", headers=admin_h)
        assert bad.status_code == 409 and "completed" in bad.json()["detail"], verb


@BOTH_DATABASES
def test_latency_regression_halts_and_rolls_back_first_wave(client, admin_h, read_h, fleet, feed, fleet_ctx):
    rid = create(client, admin_h, max_p95_regression=0.2).json()["id"]
    ctx, clock = fleet_ctx, fleet_ctx.test_clock
    ctx.rollouts.tick()
    first = wave_devices(client, read_h, rid, 0)
    install(feed, ctx, rid, first)
    ctx.rollouts.tick()
    telemetry(feed, clock, fleet, first, V2, p95=5.0)  # +150%
    clock.advance(31)
    ctx.rollouts.tick()
    st = client.get(f"/api/v1/rollouts/{rid}", headers=read_h).json()
    assert st["state"] == "halted" and "p95 latency" in st["reason"]
    assert st["waves"][0]["state"] == "failed" and st["waves"][0]["gate"]["passed"] is False
    assert st["waves"][0]["rolled_back"] == 2 and st["waves"][1]["state"] == "pending"
    for d in first:
        dev = client.get(f"/api/v1/devices/{d}", headers=read_h).json()
        assert dev["desired"] == {"name": "tiny", "version": "1.0.0"}
    untouched = wave_devices(client, read_h, rid, 1)
    assert all(client.get(f"/api/v1/devices/{d}", headers=read_h).json()["desired"] is None for d in untouched)


@BOTH_DATABASES
def test_pause_resume_abort_and_audit(client, admin_h, read_h, fleet, fleet_ctx):
    rid = create(client, admin_h).json()["id"]
    fleet_ctx.rollouts.tick()
    p = client.post(f"/api/v1/rollouts/{rid}/pause", headers=admin_h)
    assert p.status_code == 200 and p.json()["state"] == "paused"
    again = client.post(f"/api/v1/rollouts/{rid}/pause", headers=admin_h)
    assert again.status_code == 409 and "cannot pause" in again.json()["detail"]
    assert client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin_h).json()["state"] == "running"
    a = client.post(f"/api/v1/rollouts/{rid}/abort", json={"reason": "wrong model"}, headers=admin_h)
    assert a.status_code == 200 and a.json()["state"] == "aborted" and a.json()["reason"] == "wrong model"
    assert a.json()["waves"][0]["rolled_back"] == 2
    assert client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin_h).status_code == 409
    entries = client.get("/api/v1/audit", params={"action": "rollout."}, headers=read_h).json()["entries"]
    assert [e["action"] for e in entries] == ["rollout.abort", "rollout.resume", "rollout.pause", "rollout.create"]
    assert entries[0]["details"] == {"from": "running", "to": "aborted", "reason": "wrong model"}
    assert all(e["target"] == f"rollout:{rid}" for e in entries)
    assert client.get("/api/v1/audit/verify", headers=read_h).json()["ok"] is True


def test_rollout_events(client, admin_h, read_h, fleet, feed, fleet_ctx):
    rid = create(client, admin_h).json()["id"]
    t = fleet_ctx.test_clock()
    feed(wire.Event(device_id="cam-1", seq=500, kind="ota.download", message="ok", rollout_id=rid, ts=t),
         wire.Event(device_id="cam-2", seq=501, kind="ota.failed", level="error", message="sha256 mismatch",
                    rollout_id=rid, ts=t),
         wire.Event(device_id="cam-3", seq=502, kind="ota.download", message="other", rollout_id="r-else", ts=t))
    ev = client.get(f"/api/v1/rollouts/{rid}/events", headers=read_h).json()
    assert ev["count"] == 2 and {e["device_id"] for e in ev["events"]} == {"cam-1", "cam-2"}
    errors = client.get(f"/api/v1/rollouts/{rid}/events", params={"level": "error"}, headers=read_h).json()
    assert [e["message"] for e in errors["events"]] == ["sha256 mismatch"]
    assert client.get(f"/api/v1/rollouts/{rid}/events", params={"level": "loud"}, headers=read_h).status_code == 422
    assert client.get("/api/v1/rollouts/r-nope/events", headers=read_h).status_code == 404


def test_unknown_rollout_is_404(client, admin_h, read_h):
    assert client.get("/api/v1/rollouts/r-nope", headers=read_h).status_code == 404
    assert client.get("/api/v1/rollouts/r-nope/devices", headers=read_h).status_code == 404
    r = client.post("/api/v1/rollouts/r-nope/pause", headers=admin_h)
    assert r.status_code == 404 and "no rollout 'r-nope'" in r.json()["detail"]


@pytest.mark.parametrize("kw, fragment", [
    ({"waves": "10,50"}, "last wave must be 100"),
    ({"waves": "50,10,100"}, "strictly increase"),
    ({"soak_s": "soon"}, "not like 300s"),
    ({"bundle": "tiny@9.9.9"}, "no bundle tiny@9.9.9"),
    ({"bundle": "tiny"}, "NAME@VERSION"),
    ({"selector": "tag=nothing-has-this"}, "matches no device"),
    ({"selector": "bogus=1"}, "unknown key"),
    ({"max_failure_rate": 2}, "max_failure_rate"),
    ({"colour": "red"}, "colour"),
])
def test_bad_rollout_definitions_are_422(client, admin_h, fleet, kw, fragment):
    r = create(client, admin_h, **kw)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_overlapping_rollout_is_409(client, admin_h, fleet):
    assert create(client, admin_h).status_code == 201
    r = create(client, admin_h, selector="id=cam-1")
    assert r.status_code == 409 and "another running or paused rollout" in r.json()["detail"]

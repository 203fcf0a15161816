"""Devices (selector filter, overview, detail, tag/group edits) and per-device telemetry series."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgekit import wire

#: run on SQLite and on the real PostgreSQL server (skipped, naming what is missing, without one)
BOTH_DATABASES = pytest.mark.parametrize(
    "fleet_db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True)



@pytest.fixture
def fleet3(feed, fleet_ctx):
    now = fleet_ctx.test_clock()
    feed(
        wire.Status(device_id="cam-1", state="online", profile="raspberry-pi-5", tags=["line-3"],
                    model=wire.ModelRef(name="tiny", version="1.0.0"), ts=now),
        wire.Status(device_id="cam-2", state="online", profile="x86-avx2", tags=["line-3", "lab"], ts=now),
        wire.Status(device_id="cam-3", state="online", profile="raspberry-pi-5", ts=now),
        wire.Reported(device_id="cam-1", active=wire.ModelRef(name="tiny", version="1.0.0"), ota_state="installed",
                      ts=now),
    )
    feed(wire.Status(device_id="cam-3", state="offline", ts=now))  # its last will


def ids(resp):
    return [d["id"] for d in resp.json()]


@BOTH_DATABASES
def test_list_and_selectors(client, read_h, fleet3):
    assert ids(client.get("/api/v1/devices", headers=read_h)) == ["cam-1", "cam-2", "cam-3"]
    assert ids(client.get("/api/v1/devices", params={"selector": "tag=line-3"}, headers=read_h)) == ["cam-1", "cam-2"]
    assert ids(client.get("/api/v1/devices", params={"selector": "profile=raspberry-pi-5"}, headers=read_h)) == [
        "cam-1", "cam-3"]
    assert ids(client.get("/api/v1/devices", params={"selector": "tag=line-3,profile=x86-avx2"},
                          headers=read_h)) == ["cam-2"]
    assert ids(client.get("/api/v1/devices", params={"selector": "id=cam-1,cam-3"}, headers=read_h)) == [
        "cam-1", "cam-3"]
    r = client.get("/api/v1/devices", params={"online": "false"}, headers=read_h)
    assert ids(r) == ["cam-3"] and r.headers["x-total-count"] == "1"
    page = client.get("/api/v1/devices", params={"limit": 1, "offset": 1}, headers=read_h)
    assert ids(page) == ["cam-2"] and page.headers["x-total-count"] == "3"
    tagged = client.get("/api/v1/devices", params={"selector": "tag=line-3,lab", "limit": 1, "offset": 1},
                        headers=read_h)
    assert ids(tagged) == ["cam-2"] and tagged.headers["x-total-count"] == "2"  # filtered and paged in SQL


@pytest.mark.parametrize("sel, fragment", [("colour=red", "unknown key 'colour'"), ("", "empty selector"),
                                           ("tag=", "has no value")])
def test_bad_selector_is_422(client, read_h, fleet3, sel, fragment):
    r = client.get("/api/v1/devices", params={"selector": sel}, headers=read_h)
    assert r.status_code == 422 and fragment in r.json()["detail"]


@BOTH_DATABASES
def test_overview(client, read_h, fleet3):
    o = client.get("/api/v1/overview", headers=read_h).json()
    assert (o["devices"], o["online"], o["offline"]) == (3, 2, 1)
    assert o["versions"] == {"tiny@1.0.0": 1, "none": 2}
    assert o["profiles"] == {"raspberry-pi-5": 2, "x86-avx2": 1}


def test_detail_and_404(client, read_h, fleet3):
    d = client.get("/api/v1/devices/cam-1", headers=read_h).json()
    assert d["active"] == {"name": "tiny", "version": "1.0.0"} and d["online"] is True
    assert d["profile"] == "raspberry-pi-5" and d["ota_state"] == "installed"
    assert d["last_seen"].endswith("Z") or d["last_seen"].endswith("+00:00")
    r = client.get("/api/v1/devices/nope", headers=read_h)
    assert r.status_code == 404 and "no device 'nope'" in r.json()["detail"]


@BOTH_DATABASES
def test_edit_tags_and_group_is_audited(client, admin_h, read_h, fleet3):
    r = client.patch("/api/v1/devices/cam-2", json={"add_tags": ["canary"], "remove_tags": ["lab"], "group": "eu"},
                     headers=admin_h)
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["line-3", "canary"] and r.json()["group"] == "eu"
    assert ids(client.get("/api/v1/devices", params={"selector": "group=eu"}, headers=read_h)) == ["cam-2"]
    r = client.patch("/api/v1/devices/cam-2", json={"tags": ["a", "b"], "group": ""}, headers=admin_h)
    assert r.json()["tags"] == ["a", "b"] and r.json()["group"] is None
    entries = client.get("/api/v1/audit", params={"action": "device."}, headers=read_h).json()["entries"]
    assert len(entries) == 2
    assert entries[1]["details"] == {"before": {"tags": ["line-3", "lab"], "group": None},
                                     "after": {"tags": ["line-3", "canary"], "group": "eu"}}


@pytest.mark.parametrize("body, fragment", [
    ({"tags": ["has space"]}, "tag 'has space'"),
    ({"group": "a/b"}, "group 'a/b'"),
    ({"colour": "red"}, "colour"),
    ({"tags": "notalist"}, "tags"),
])
def test_bad_edits_are_422(client, admin_h, fleet3, body, fragment):
    r = client.patch("/api/v1/devices/cam-1", json=body, headers=admin_h)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text


def test_edit_unknown_device_is_404(client, admin_h):
    assert client.patch("/api/v1/devices/ghost", json={"tags": ["a"]}, headers=admin_h).status_code == 404


def test_malformed_json_is_422(client, admin_h, fleet3):
    r = client.patch("/api/v1/devices/cam-1", content=b"{not json", headers={**admin_h, "content-type": "application/json"})
    assert r.status_code == 422


@BOTH_DATABASES
def test_telemetry_series_and_events(client, read_h, feed, fleet3, fleet_ctx):
    t0 = fleet_ctx.test_clock()
    feed(*[
        wire.Telemetry(device_id="cam-1", seq=i, ts=t0 + timedelta(seconds=10 * i), requests=100, errors=i,
                       model=wire.ModelRef(name="tiny", version="1.0.0"),
                       latency=wire.LatencyStats(p50_ms=1.0 + i, p95_ms=2.0 + i, p99_ms=3.0 + i),
                       drift=wire.DriftStats(confidence_mean=0.9 - i / 100,
                                             inputs={"image": wire.InputStats(count=10, mean=0.1 * i, std=1.0)}))
        for i in range(5)
    ], wire.Event(device_id="cam-1", seq=100, kind="ota.installed", message="tiny@1.0.0", ts=t0))
    s = client.get("/api/v1/telemetry/cam-1", headers=read_h).json()
    assert s["count"] == 5
    assert [p["p95_ms"] for p in s["points"]] == [2.0, 3.0, 4.0, 5.0, 6.0]  # oldest first
    assert s["points"][2]["error_rate"] == pytest.approx(0.02)
    assert s["points"][3]["confidence_mean"] == pytest.approx(0.87)
    assert s["points"][4]["inputs"]["image"]["mean"] == pytest.approx(0.4)
    assert s["points"][0]["model"] == "tiny@1.0.0"
    last2 = client.get("/api/v1/telemetry/cam-1", params={"limit": 2}, headers=read_h).json()
    assert [p["seq"] for p in last2["points"]] == [3, 4]
    since = (t0 + timedelta(seconds=25)).isoformat()
    assert client.get("/api/v1/telemetry/cam-1", params={"since": since}, headers=read_h).json()["count"] == 2
    ev = client.get("/api/v1/telemetry/cam-1/events", headers=read_h).json()
    assert ev["events"][0]["kind"] == "ota.installed"
    assert client.get("/api/v1/telemetry/ghost", headers=read_h).status_code == 404
    bad = client.get("/api/v1/telemetry/cam-1", params={"since": "yesterday"}, headers=read_h)
    assert bad.status_code == 422 and "since" in bad.json()["detail"]


@BOTH_DATABASES
def test_bucketed_series_for_long_windows(client, read_h, feed, fleet3, fleet_ctx):
    t0 = fleet_ctx.test_clock().replace(second=0, microsecond=0)
    feed(*[
        wire.Telemetry(device_id="cam-2", seq=i, ts=t0 + timedelta(seconds=10 * i), requests=100, errors=i % 2,
                       latency=wire.LatencyStats(p95_ms=float(i)),
                       drift=wire.DriftStats(confidence_mean=0.5, predictions={"a": 1},
                                             inputs={"x": wire.InputStats(count=1, mean=float(i), std=1.0)}))
        for i in range(12)  # two minutes of 10 s telemetry
    ])
    r = client.get("/api/v1/telemetry/cam-2", params={"bucket_s": 60}, headers=read_h).json()
    assert r["bucket_s"] == 60 and r["count"] == 2
    first, second = r["points"]
    assert first["samples"] == 6 and second["samples"] == 6
    assert first["p95_ms"] == pytest.approx(2.5) and second["p95_ms"] == pytest.approx(8.5)  # means
    assert first["requests"] == 600 and first["errors"] == 3 and first["error_rate"] == pytest.approx(0.005)
    assert first["inputs"]["x"]["mean"] == pytest.approx(2.5) and first["predictions"] == {"a": 6}
    assert first["ts"].startswith(t0.strftime("%Y-%m-%dT%H:%M"))
    last = client.get("/api/v1/telemetry/cam-2", params={"bucket_s": 60, "limit": 1}, headers=read_h).json()
    assert [p["samples"] for p in last["points"]] == [6] and last["points"][0]["seq"] == 11
    bad = client.get("/api/v1/telemetry/cam-2", params={"bucket_s": 0}, headers=read_h)
    assert bad.status_code == 422 and "bucket_s" in bad.json()["detail"]

"""The dashboard in a real headless Chromium: log in with a token, read the overview, click into a
device (latency and drift charts) and a rollout (waves and gate results), verify the audit chain."""

from __future__ import annotations

import io
import math
import tarfile
import threading

import pytest
from fleet_web_browser import CHROMEDRIVER, CHROMIUM, Browser
from servers import free_port, wait_port

from edgekit import wire
from fleet.audit import record
from fleet.db.models import Device, RolloutDevice
from fleet.rollouts import RolloutSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver not installed (apt-get install chromium-driver)"),
]

V1 = wire.ModelRef(name="tiny", version="1.0.0")
V2 = wire.ModelRef(name="tiny", version="2.0.0")
DEVICES = ["cam-1", "cam-2", "cam-3", "cam-4"]


def populate(ctx, feed, tiny_bundle, bundle_v2):
    """A small fleet with history: 4 devices (one offline), 30 min of telemetry, a rollout whose
    first wave passed its gate and whose second wave is soaking."""
    ctx.registry.upload(tiny_bundle)
    ctx.registry.upload(bundle_v2)
    clock = ctx.test_clock
    clock.advance(-1800)
    feed(*[wire.Status(device_id=d, state="online", profile="raspberry-pi-5" if i % 2 else "x86-avx2",
                       tags=["line-3"] if i < 2 else ["lab"], model=V1, agent_version="0.1.0", ts=clock())
           for i, d in enumerate(DEVICES)])
    feed(*[wire.Reported(device_id=d, active=V1, ota_state="installed", ts=clock()) for d in DEVICES])
    seq = dict.fromkeys(DEVICES, 0)

    def telemetry(devices, model, minutes, p95):
        for _ in range(minutes * 2):
            t = clock()
            k = seq[devices[0]]
            feed(*[wire.Telemetry(
                device_id=d, seq=seq[d], ts=t, model=model, requests=120, errors=int(k % 7 == 0),
                latency=wire.LatencyStats(p50_ms=p95 * 0.55, p95_ms=p95 + 0.2 * math.sin(k / 3), p99_ms=p95 * 1.3),
                cpu_percent=35 + 5 * math.sin(k / 5), memory_mb=180,
                drift=wire.DriftStats(confidence_mean=0.91 - 0.01 * math.sin(k / 4),
                                      inputs={"image": wire.InputStats(count=120, mean=0.02 * math.cos(k / 6), std=1)}))
                for d in devices])
            for d in devices:
                seq[d] += 1
            clock.advance(30)

    telemetry(DEVICES, V1, 10, 2.0)
    status = ctx.rollouts.create(RolloutSpec.build(bundle="tiny@2.0.0", selector="all", waves="50,100", soak_s="5m"),
                                 created_by="token:admin(test)")
    rid = status.id
    for wave in (0, 1):
        ctx.rollouts.tick()
        with ctx.database.session() as s:
            members = [m.device_id for m in s.query(RolloutDevice).filter_by(rollout_id=rid, wave=wave)]
            gens = {d: s.get(Device, d).desired_generation for d in members}
        feed(*[wire.Event(device_id=d, seq=10_000 + 10 * wave + i, kind=kind, message=msg, rollout_id=rid, ts=clock())
               for d in members
               for i, (kind, msg) in enumerate([("ota.download", "tiny@2.0.0 downloaded (3.1 KiB)"),
                                                ("ota.verified", "signature and hashes ok"),
                                                ("ota.installed", "golden check passed 8/8")])])
        feed(*[wire.Reported(device_id=d, active=V2, previous=V1, ota_state="installed", rollout_id=rid,
                             generation=gens[d], ts=clock()) for d in members])
        ctx.rollouts.tick()
        telemetry(members, V2, 6 if wave == 0 else 2, 2.1)
        if wave == 0:
            ctx.rollouts.tick()
    feed(wire.Status(device_id="cam-4", state="offline", ts=clock()))
    with ctx.database.session() as s:
        record(s, "token:admin(test)", "rollout.create", f"rollout:{rid}", {"bundle": "tiny@2.0.0"})
    return rid


def flip_last_byte(bundle, member: str) -> None:
    """Corrupt one byte of one member of a bundle tar, keeping everything else (so only its hash fails)."""
    out = io.BytesIO()
    with tarfile.open(bundle) as tin, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name == member:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            tout.addfile(m, io.BytesIO(data))
    bundle.write_bytes(out.getvalue())


def charts(b) -> dict[str, dict]:
    """The device page's charts: title → number of plotted points and the series drawn."""
    found = b.execute("""return [...document.querySelectorAll('#device-charts figure')].map(f => ({
        title: f.querySelector('figcaption').textContent,
        points: +f.querySelector('svg').dataset.points,
        lines: [...f.querySelectorAll('path.line')].map(p => p.dataset.series)}))""")
    return {c["title"].split(" (")[0]: c for c in found}


@pytest.fixture
def served(fleet_ctx):
    """The real app under uvicorn on a free loopback port (a thread; stopped after the test)."""
    import uvicorn

    from fleet.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(fleet_ctx), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(10)


def test_dashboard_in_chromium(served, fleet_ctx, feed, tokens, tiny_bundle, bundle_v2, tmp_path, tiny_onnx,
                               signing_keys):
    from runtimes.packaging import bundle_from_onnx

    rid = populate(fleet_ctx, feed, tiny_bundle, bundle_v2)
    bundle_v3 = tmp_path / "tiny-3.0.0.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="3.0.0", key=signing_keys[0], out=bundle_v3)
    tampered = tmp_path / "tiny-3.0.1.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="3.0.1", key=signing_keys[0], out=tampered)
    flip_last_byte(tampered, "model.onnx")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Browser(tmp_path, free_port()) as b:
        b.get(served + "/")
        # no token yet: the login panel asks for one; a wrong token is refused with a message
        b.type(b.wait("#token-input"), "ekt_0000000000000000_not-a-real-secret-at-all")
        b.click(b.wait("#login-form button"))
        b.wait("#login-error", contains="refused")
        b.execute("document.getElementById('token-input').value = ''")
        b.type(b.wait("#token-input"), tokens["admin"])
        b.click(b.wait("#login-form button"))
        b.execute("localStorage.setItem('edgekit.autorefresh', 'off')")

        # overview: counts, versions, profiles
        assert b.text(b.wait("#stat-devices .value", contains="4")) == "4"
        assert b.text(b.wait("#stat-online .value")) == "3"
        assert b.text(b.wait("#stat-offline .value")) == "1"
        assert "tiny@2.0.0" in b.text(b.wait("#versions")) and "raspberry-pi-5" in b.text(b.wait("#profiles"))
        assert b.text(b.wait("#whoami")) == "test-admin (admin)"
        health = b.text(b.wait("#health"))
        assert "database" in health and "ok" in health and "analytics" in health
        b.screenshot(shots / "overview.png")

        # click into a device: details, latency and drift charts drawn from its telemetry
        b.click_link("nav a", "Devices")
        b.wait("#devices-table", contains="cam-4")
        assert "offline" in b.text(b.wait("#devices-table tr", contains="cam-4"))
        assert b.text(b.wait("#devices-count")).startswith("1–4 of 4 devices")
        # a selector filters server-side; a bad one shows the API's message
        sel = b.wait("#device-filter input[name=selector]")
        b.execute("arguments[0].value = ''", {"element-6066-11e4-a52e-4f735466cecf": sel})
        b.type(sel, "tag=lab")
        b.click(b.wait("#device-filter button"))
        b.wait("#devices-count", contains="of 2 devices")
        assert "cam-1" not in b.text(b.wait("#devices-table"))
        sel = b.wait("#device-filter input[name=selector]")
        b.execute("arguments[0].value = 'colour=red'", {"element-6066-11e4-a52e-4f735466cecf": sel})
        b.click(b.wait("#device-filter button"))
        assert "unknown key 'colour'" in b.text(b.wait("#app .error"))
        b.click_link("nav a", "Devices")
        b.wait("#devices-count", contains="of 4 devices")
        b.click_link("a.device-link", "cam-1")
        b.wait("#device-title", contains="Device cam-1")
        info = b.text(b.wait("#device-info"))
        assert "tiny@2.0.0" in info and "line-3" in info
        by_title = charts(b)
        assert by_title["Inference latency"]["lines"] == ["p50", "p95", "p99"]
        assert by_title["Inference latency"]["points"] > 60
        assert "mean confidence" in by_title["Drift"]["lines"]
        assert by_title["Drift"]["points"] > 30
        assert "ota.installed" in b.text(b.wait("#events-table", contains="golden check passed"))
        b.screenshot(shots / "device.png")
        # an admin edits tags and group in place; the API has them and the audit log says who
        tags = b.wait("#tag-form input[name=tags]")
        b.execute("arguments[0].value = 'line-3, canary'", {"element-6066-11e4-a52e-4f735466cecf": tags})
        b.type(b.wait("#tag-form input[name=group]"), "eu")
        b.click(b.wait("#tag-form button"))
        assert "canary" in b.text(b.wait("#device-info", contains="canary"))
        assert "token:test-admin" in b.text(b.wait("#device-audit", contains="device.update"))
        with fleet_ctx.database.session() as s:
            dev = s.get(Device, "cam-1")
            assert (dev.tags, dev.group) == (["line-3", "canary"], "eu")
        # a longer window is averaged into fewer, wider buckets by the API
        b.click(b.wait("#window-picker a[data-window='24h']"))
        b.wait("#window-picker strong", contains="24h")
        coarse = charts(b)["Inference latency"]["points"]
        assert 0 < coarse < by_title["Inference latency"]["points"]

        # click into the rollout: waves with gate results
        b.click_link("nav a", "Rollouts")
        b.click_link("a.rollout-link", rid)
        b.wait("#rollout-title", contains=rid)
        first = b.text(b.wait("#waves .wave[data-wave='0']", contains="passed"))
        assert "gate" in first and "p95 latency" in first and "2.00 → 2.1" in first
        second = b.text(b.wait("#waves .wave[data-wave='1']"))
        assert "soaking" in second and "gate pending" in second
        assert "tiny@2.0.0" in b.text(b.wait("#rollout-info"))
        lines = b.execute("""return [...document.querySelectorAll('#rollout-charts figure')].map(
            f => [...f.querySelectorAll('path.line')].map(p => p.dataset.series))""")
        assert lines == [["tiny@1.0.0", "tiny@2.0.0"], ["tiny@1.0.0", "tiny@2.0.0"]]  # before/after, per wave
        assert "golden check passed" in b.text(b.wait("#rollout-events", contains="ota.installed"))
        b.screenshot(shots / "rollout.png")

        # an admin can pause it from the page; the API agrees
        b.click(b.wait("#rollout-pause"))
        b.wait("#rollout-title", contains="paused")
        assert fleet_ctx.rollouts.status(rid).state == "paused"

        # audit log: the pause is there, and the chain verifies
        b.click_link("nav a", "Audit log")
        assert "rollout.pause" in b.text(b.wait("#audit-table", contains="rollout.pause"))
        b.click(b.wait("#verify-chain"))
        assert "chain intact" in b.text(b.wait("#verify-result", contains="chain intact"))
        b.screenshot(shots / "audit.png")
        # bundles: an admin uploads from the page; a tampered file is refused with the verifier's reason
        b.click_link("nav a", "Bundles")
        b.wait("#bundles-table", contains="tiny@2.0.0")
        b.type(b.wait("#upload-form input[type=file]"), str(tampered))
        b.click(b.wait("#upload-form button"))
        assert "sha256 mismatch" in b.text(b.wait("#upload-result", contains="refused"))
        b.type(b.wait("#upload-form input[type=file]"), str(bundle_v3))
        b.click(b.wait("#upload-form button"))
        b.wait("#upload-result", contains="accepted tiny@3.0.0")
        assert "tiny@3.0.0" in b.text(b.wait("#bundles-table", contains="tiny@3.0.0"))
        b.screenshot(shots / "bundles.png")

        # a new rollout over devices busy in the paused one is refused, and the page says why
        b.click_link("nav a", "Rollouts")
        b.click(b.wait("#new-rollout summary"))
        b.click(b.wait("#new-rollout button"))
        assert "another running or paused rollout" in b.text(b.wait("#rollout-form-error", contains="rollout"))
        b.screenshot(shots / "rollouts.png")

        # a read-only token sees everything but no buttons that change anything
        b.click(b.wait("#logout"))
        b.execute("document.getElementById('token-input').value = ''")
        b.type(b.wait("#token-input"), tokens["read"])
        b.click(b.wait("#login-form button"))
        b.wait("#whoami", contains="(read)")
        b.get(f"{served}/#/rollout/{rid}")
        b.wait("#rollout-title", contains=rid)
        assert b.find_all("#rollout-pause, #rollout-resume, #rollout-abort") == []
        b.get(f"{served}/#/bundles")
        b.wait("#bundles-table", contains="tiny@3.0.0")
        assert b.find_all("#upload-form") == []

        # no script errors and no Content-Security-Policy violations on the way (the refused token's 401
        # and the bad selector's 422 are the expected failed requests)
        expected = ("/api/v1/whoami - Failed to load resource: the server responded with a status of 401",
                    "colour%3Dred&limit=500&offset=0 - Failed to load resource: the server responded with a status of 422",
                    "/api/v1/bundles - Failed to load resource: the server responded with a status of 422",
                    "/api/v1/rollouts - Failed to load resource: the server responded with a status of 409")
        problems = [e["message"] for e in b.console()
                    if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)]
        assert problems == []
    for name in ("overview", "device", "rollout", "audit"):
        png = (shots / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

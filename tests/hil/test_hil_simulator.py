"""``edgekit hil simulate``: real mosquitto, every seq arrives, the OTA state machine, scripted behaviour."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.bundle import file_sha256, read_manifest
from edgekit.cli import main as cli_main
from edgekit.errors import ConfigError
from edgekit.wire import BundleRef, Desired, ModelRef, encode, topic
from hil.collector import WireCollector
from hil.simscript import SimScript, load_script
from hil.simulator import SimConfig, Simulator, SimulatorThread

pytestmark = pytest.mark.integration


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def bundle_server(tmp_path, tiny_bundle):
    """Serves ``tiny_bundle`` (and a broken copy) over plain HTTP, like the fleet's download route."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.ekb").write_bytes(tiny_bundle.read_bytes())
    data = bytearray(tiny_bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "broken.ekb").write_bytes(bytes(data))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def _publish(broker, messages: list[tuple[str, bytes]]) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet")
    c.connect(broker.host, broker.port)
    c.loop_start()
    for t, payload in messages:
        c.publish(t, payload, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def _desired(device: str, url: str, path: Path, *, rollout: str = "r1", gen: int = 1) -> bytes:
    m = read_manifest(path)
    ref = BundleRef(name=m.name, version=m.version, url=url, sha256=file_sha256(path), size=path.stat().st_size)
    return encode(Desired(device_id=device, bundle=ref, rollout_id=rollout, generation=gen))


def _sim(broker, n: int, script: SimScript | None = None, **kw) -> SimulatorThread:
    cfg = SimConfig(broker_url=broker.url, devices=n, telemetry_interval_s=kw.pop("interval", 0.2), drain_s=5, **kw)
    return SimulatorThread(Simulator(cfg, script))


def test_fifty_devices_every_seq_arrives(mosquitto):
    with WireCollector(mosquitto.host, mosquitto.port) as col:
        sim = _sim(mosquitto, 50).start()
        assert sim.wait_for(lambda s: s.report().connected == 50, timeout=20)
        time.sleep(2.0)
        report = sim.stop()
        assert report.telemetry_sent >= 50 * 8 and report.unacked == 0 and report.evicted == 0
        assert report.acked == report.telemetry_sent + report.events_sent
        assert col.wait_complete(report.last_seq, timeout=10) == {}
        assert col.received >= report.telemetry_sent
        time.sleep(0.3)
        assert len(col.status) == 50 and all(s.state == "offline" for s in col.status.values())
        assert col.invalid == 0


def test_ota_follows_the_agent_sequence_with_real_download(mosquitto, bundle_server, signing_keys, tmp_path):
    url, root = bundle_server
    _, _, keydir = signing_keys
    script = SimScript.model_validate({
        "initial_model": {"name": "tiny", "version": "0.9.0"},
        "ota": {"step_s": 0.05, "soak_s": 0.3},
        "devices": {"sim-00001": {"golden": "fail"}, "sim-00002": {"download": "corrupt"},
                    "sim-00003": {"soak": "fail"}},
    })
    with WireCollector(mosquitto.host, mosquitto.port) as col:
        sim = _sim(mosquitto, 5, script, trusted_keys=[keydir / "signing.pub"], fleet_url=url).start()
        assert sim.wait_for(lambda s: s.report().connected == 5, timeout=20)
        _publish(mosquitto, [(topic(f"sim-0000{i}", "desired"), _desired(f"sim-0000{i}", f"{url}/tiny.ekb", root / "tiny.ekb"))
                             for i in range(5)])
        done = sim.wait_for(lambda s: all(d.ota.state in ("installed", "rolled_back", "failed") and not d.ota.soaking
                                          for d in s.devices), timeout=20)
        assert done
        time.sleep(0.5)
        report = sim.stop()
    assert sim.sim.source.fetches == 1  # one real download + verification shared by the fleet
    states = {d.device_id: d.ota.state for d in sim.sim.devices}
    assert states == {"sim-00000": "installed", "sim-00001": "rolled_back", "sim-00002": "rolled_back",
                      "sim-00003": "rolled_back", "sim-00004": "installed"}
    models = {d.device_id: d.model for d in sim.sim.devices}
    assert models["sim-00000"] == ModelRef(name="tiny", version="1.0.0")
    assert all(models[f"sim-0000{i}"] == ModelRef(name="tiny", version="0.9.0") for i in (1, 2, 3))
    assert col.event_kinds("sim-00000") == ["ota.accepted", "ota.download", "ota.verify", "ota.check", "ota.switch",
                                            "ota.installed"]
    assert col.event_kinds("sim-00001")[-2:] == ["ota.failed", "ota.rollback"]
    assert "sha256 mismatch" in col.events["sim-00002"][-2].message
    assert col.event_kinds("sim-00003")[-1] == "ota.rollback"
    assert col.reported["sim-00000"].ota_state == "installed" and col.reported["sim-00000"].generation == 1
    assert col.reported["sim-00003"].active == ModelRef(name="tiny", version="0.9.0")
    assert col.missing(report.last_seq) == {}


def test_failed_bundle_is_not_retried_and_bad_desired_is_rejected(mosquitto, bundle_server, signing_keys):
    url, root = bundle_server
    _, _, keydir = signing_keys
    script = SimScript.model_validate({"ota": {"step_s": 0.02, "soak_s": 0}})
    dev = "sim-00000"
    with WireCollector(mosquitto.host, mosquitto.port) as col:
        sim = _sim(mosquitto, 1, script, trusted_keys=[keydir / "signing.pub"], fleet_url=url).start()
        assert sim.wait_for(lambda s: s.report().connected == 1, timeout=20)
        broken = _desired(dev, f"{url}/broken.ekb", root / "broken.ekb")
        _publish(mosquitto, [(topic(dev, "desired"), broken)])
        assert sim.wait_for(lambda s: s.devices[0].ota.state == "failed", timeout=10)
        bad = [b"{not json", _desired("sim-other", f"{url}/tiny.ekb", root / "tiny.ekb"),
               _desired(dev, "ftp://x/tiny.ekb", root / "tiny.ekb"),
               _desired(dev, "http://evil.example/tiny.ekb", root / "tiny.ekb")]
        _publish(mosquitto, [(topic(dev, "desired"), b) for b in bad])
        _publish(mosquitto, [(topic(dev, "desired"), broken.replace(b'"generation":1', b'"generation":2'))])
        assert sim.wait_for(lambda s: "ota.skipped" in col.event_kinds(dev), timeout=10)
        report = sim.stop()
    kinds = col.event_kinds(dev)
    assert kinds.count("desired.rejected") == 4 and kinds.count("ota.accepted") == 1
    msgs = " | ".join(e.message for e in col.events[dev] if e.kind == "desired.rejected")
    for needle in ("malformed", "addressed to device", "not http(s)", "unauthorised source"):
        assert needle in msgs
    assert sim.sim.devices[0].model is None and report.ota_states == {"failed": 1}


def test_transient_download_failure_is_retried_not_blacklisted(mosquitto, bundle_server, signing_keys):
    url, root = bundle_server
    _, _, keydir = signing_keys
    script = SimScript.model_validate({"initial_model": {"name": "tiny", "version": "0.9.0"},
                                       "ota": {"step_s": 0.01, "soak_s": 0, "retry_min_s": 0.2},
                                       "devices": {"sim-00000": {"download": "truncated"}}})
    with WireCollector(mosquitto.host, mosquitto.port) as col:
        sim = _sim(mosquitto, 2, script, trusted_keys=[keydir / "signing.pub"]).start()
        assert sim.wait_for(lambda s: s.report().connected == 2, timeout=20)
        _publish(mosquitto, [(topic(f"sim-0000{i}", "desired"), _desired(f"sim-0000{i}", f"{url}/tiny.ekb", root / "tiny.ekb"))
                             for i in range(2)])
        assert sim.wait_for(lambda s: s.devices[0].ota.retries >= 2 and s.devices[1].ota.state == "installed", timeout=20)
        sim.stop()
    flaky, fine = sim.sim.devices
    assert flaky.ota.failed == [] and flaky.model == ModelRef(name="tiny", version="0.9.0")
    assert flaky.ota.state == "rolled_back" and "ota.failed" not in col.event_kinds("sim-00000")
    kinds = col.event_kinds("sim-00000")
    assert kinds.count("ota.download_failed") >= 3 and kinds.count("ota.retry") >= 3
    assert fine.model == ModelRef(name="tiny", version="1.0.0")


def test_download_headers_reach_the_bundle_server(mosquitto, tiny_bundle, signing_keys, tmp_path):
    """A fleet with private downloads wants a token: devices given --header get the bundle, others retry."""
    data = tiny_bundle.read_bytes()
    seen: list[str | None] = []

    class Guarded(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Bearer sekret":
                self.send_error(401)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.ekb"
    _, _, keydir = signing_keys
    script = SimScript.model_validate({"ota": {"step_s": 0, "soak_s": 0, "retry_min_s": 30}})
    try:
        for headers, expected in (({}, "failed"), ({"Authorization": "Bearer sekret"}, "installed")):
            sim = _sim(mosquitto, 1, script, trusted_keys=[keydir / "signing.pub"], download_headers=headers,
                       prefix=f"h{len(headers)}").start()
            dev = f"h{len(headers)}-00000"
            assert sim.wait_for(lambda s: s.report().connected == 1, timeout=20)
            _publish(mosquitto, [(topic(dev, "desired"), _desired(dev, url, tiny_bundle))])
            assert sim.wait_for(lambda s, e=expected: s.devices[0].ota.state == e, timeout=20)
            sim.stop()
    finally:
        httpd.shutdown()
    assert seen == [None, "Bearer sekret"]


def test_scripted_latency_and_errors_show_in_telemetry(mosquitto):
    script = SimScript.model_validate({
        "initial_model": {"name": "m", "version": "1"},
        "defaults": {"latency_ms": 2.0, "requests_per_interval": 50},
        "devices": {"sim-00001": {"latency_ms": 80.0, "error_rate": 0.5}},
    })
    with WireCollector(mosquitto.host, mosquitto.port, keep_payloads=True) as col:
        sim = _sim(mosquitto, 2, script).start()
        time.sleep(2.0)
        report = sim.stop()
        col.wait_complete(report.last_seq, timeout=10)
    fast, slow = col.telemetry["sim-00000"], col.telemetry["sim-00001"]
    assert fast and slow
    assert max(t.latency.p50_ms for t in fast) < 5 < min(t.latency.p50_ms for t in slow)
    assert sum(t.errors for t in fast) == 0
    assert 0.3 < sum(t.errors for t in slow) / sum(t.requests for t in slow) < 0.7
    assert all(t.model == ModelRef(name="m", version="1") for t in fast)


def test_script_resolution_precedence():
    s = SimScript.model_validate({
        "defaults": {"latency_ms": 1},
        "bundles": {"b": {"latency_ms": 2}, "b@2": {"golden": "fail"}},
        "devices": {"d-*": {"latency_ms": 3, "bundles": {"b@2": {"latency_ms": 4}}}},
    })
    assert s.behaviour("x", None).latency_ms == 1
    assert s.behaviour("x", ModelRef(name="b", version="1")).latency_ms == 2
    assert s.behaviour("x", ModelRef(name="b", version="2")).golden == "fail"
    assert s.behaviour("d-1", ModelRef(name="b", version="1")).latency_ms == 3
    assert s.behaviour("d-1", ModelRef(name="b", version="2")).latency_ms == 4


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [("defaults: {latency_ms: -1}", ".yaml", "defaults.latency_ms"), ("[1, 2]", ".yaml", "is a mapping"),
     ("{bad", ".json", "not valid JSON"), ("devices: {x: {golden: maybe}}", ".yaml", "devices.x.golden"),
     ("typo: 1", ".yaml", "typo")],
)
def test_bad_scripts_are_config_errors(tmp_path, text, suffix, message):
    p = tmp_path / f"s{suffix}"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_script(p)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--broker", "http://x"], "mqtt://host:port"), (["--broker", "mqtt://h:1", "--prefix", "a/b"], "prefix"),
     (["--broker", "mqtt://h:1", "--download", "maybe"], "--download"),
     (["--broker", "mqtt://h:1", "--script", "/nonexistent.yaml"], "cannot read"),
     (["--broker", "mqtt://127.0.0.1:1"], "cannot reach the MQTT broker"),
     (["--broker", "mqtt://h:1", "--header", "no-colon"], "Name: value")],
)
def test_simulate_cli_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as ei:
        cli_main(["hil", "simulate", "--duration", "1", *argv])
    err = capsys.readouterr().err
    assert ei.value.code == 1 and message in err and "Traceback" not in err


def test_simulate_cli_runs_and_reports_json(mosquitto, capsys):
    with pytest.raises(SystemExit) as ei:
        cli_main(["hil", "simulate", "--devices", "5", "--broker", mosquitto.url, "--duration", "1.5",
                  "--telemetry-interval", "0.25", "--download", "simulate", "--json"])
    assert ei.value.code in (0, None)
    rep = json.loads(capsys.readouterr().out)
    assert rep["devices"] == 5 and rep["telemetry_sent"] >= 20 and rep["unacked"] == 0

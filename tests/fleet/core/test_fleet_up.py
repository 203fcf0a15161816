"""``edgekit fleet up`` as a real process (mosquitto child, SQLite, HTTP API), driven by the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgekit import wire
from fleet.broker import find_mosquitto
from fleet.security.download_token import verify_download_token

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from servers import free_port, wait_port  # noqa: E402

pytestmark = pytest.mark.integration

EDGEKIT = [str(Path(sys.executable).parent / "edgekit")]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKIT, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def fleet_up(tmp_path, signing_keys):
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    _, _, keydir = signing_keys
    data = tmp_path / "fleet"
    (data / "trusted-keys").mkdir(parents=True)
    shutil.copy(keydir / "signing.pub", data / "trusted-keys" / "ci.pub")
    port, broker_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*EDGEKIT, "fleet", "up", "--data-dir", str(data), "--port", str(port), "--host", "127.0.0.1",
         "--broker-port", str(broker_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    token, lines = None, []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and token is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("admin token"):
            token = line.rsplit(" ", 1)[1].strip()
    if token is None:
        proc.kill()
        pytest.fail("fleet up printed no admin token:\n" + "".join(lines))
    wait_port(port)
    env = {**os.environ, "EDGEKIT_FLEET_URL": f"http://127.0.0.1:{port}", "EDGEKIT_FLEET_TOKEN": token}
    yield {"proc": proc, "env": env, "broker_port": broker_port, "data": data, "port": port, "token": token}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_fleet_up_push_devices_rollout(fleet_up, bundles, tmp_path):
    env = fleet_up["env"]
    # a device comes online on the fleet's own broker
    dev = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="cam-1")
    dev.connect("127.0.0.1", fleet_up["broker_port"])
    dev.loop_start()
    dev.publish(wire.topic("cam-1", "status"), wire.encode(wire.Status(
        device_id="cam-1", state="online", profile="x86-avx2", tags=["line-3"],
        model=wire.ModelRef(name="tiny", version="1.0.0"))), qos=1, retain=True).wait_for_publish(5)

    r = cli("fleet", "push", str(bundles["1.0.0"]), env=env)
    assert r.returncode == 0, r.stderr
    assert "registered tiny@1.0.0" in r.stdout
    r = cli("fleet", "push", str(bundles["2.0.0"]), env=env)
    assert r.returncode == 0, r.stderr

    # a tampered bundle is refused with one clear line, no traceback
    bad = tmp_path / "bad.ekb"
    raw = bytearray(bundles["3.0.0"].read_bytes())
    at = bytes(raw).index(b"model.onnx\x00") + 512 + 40  # a byte inside the model's data
    raw[at] ^= 0xFF
    bad.write_bytes(bytes(raw))
    r = cli("fleet", "push", str(bad), env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "422" in r.stderr or "verif" in r.stderr.lower() or "sha256" in r.stderr

    # no token → 401 named
    r = cli("fleet", "devices", env={**env, "EDGEKIT_FLEET_TOKEN": ""})
    assert r.returncode == 1 and "401" in r.stderr

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = cli("fleet", "devices", "--json", env=env)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        if rows and rows[0]["online"]:
            break
        time.sleep(0.5)
    assert [d["id"] for d in rows] == ["cam-1"] and rows[0]["online"] and rows[0]["profile"] == "x86-avx2"

    got: list[wire.Desired] = []
    dev.on_message = lambda c, u, m: got.append(wire.decode("desired", m.payload)) if m.payload else None
    dev.subscribe(wire.topic("cam-1", "desired"), qos=1)

    r = cli("fleet", "rollout", "create", "--bundle", "tiny@2.0.0", "--selector", "tag=line-3", "--waves", "100",
            "--soak", "1s", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not got:
        time.sleep(0.2)
    assert got and got[-1].bundle.version == "2.0.0" and got[-1].rollout_id == rid
    url = urlsplit(got[-1].bundle.url)
    assert url.path.endswith("/api/v1/bundles/tiny/2.0.0/download")
    # published with a download token for this device (the stored desired state holds none)
    secret = (fleet_up["data"] / "pki" / "download-token.key").read_bytes()
    claims = verify_download_token(parse_qs(url.query)["token"][0], secret, bundle="tiny", version="2.0.0",
                                   device_id="cam-1")
    assert claims.sha256 == got[-1].bundle.sha256

    # the device installs it and reports; the rollout completes after the soak
    dev.publish(wire.topic("cam-1", "reported"), wire.encode(wire.Reported(
        device_id="cam-1", active=wire.ModelRef(name="tiny", version="2.0.0"), ota_state="installed",
        rollout_id=rid, generation=got[-1].generation, golden=wire.GoldenResult(passed=True))),
        qos=1, retain=True).wait_for_publish(5)
    deadline = time.monotonic() + 30
    state = None
    while time.monotonic() < deadline:
        r = cli("fleet", "rollout", "status", rid, "--json", env=env)
        state = json.loads(r.stdout)["state"]
        if state == "completed":
            break
        time.sleep(0.5)
    assert state == "completed"
    r = cli("fleet", "rollout", "status", rid, env=env)
    assert "completed" in r.stdout and "pass" in r.stdout
    r = cli("fleet", "rollout", "pause", rid, env=env)
    assert r.returncode == 1 and "completed" in r.stderr
    r = cli("fleet", "rollout", "create", "--bundle", "tiny", "--waves", "100", env=env)
    assert r.returncode == 1 and "NAME@VERSION" in r.stderr
    dev.loop_stop()
    dev.disconnect()


def _start_and_read(data: Path, port: int, broker_port: int) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [*EDGEKIT, "fleet", "up", "--data-dir", str(data), "--port", str(port), "--host", "127.0.0.1",
         "--broker-port", str(broker_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Uvicorn running" in line or "Application startup complete" in line:
            break
    return proc, lines


def test_only_the_first_start_prints_an_admin_token(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    data = tmp_path / "fleet"
    outputs = []
    for _ in range(2):
        proc, lines = _start_and_read(data, free_port(), free_port())
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        outputs.append("".join(lines))
        assert proc.returncode == 0, outputs[-1]
    assert "admin token (shown once" in outputs[0]
    assert "INSECURE BROKER" in outputs[0] and "for local trials only" in outputs[0].lower()
    assert "INSECURE BROKER" in (data / "broker" / "mosquitto.conf").read_text()
    assert "admin token" not in outputs[1] and "edgekit fleet: API" in outputs[1]
    assert "no trusted signing keys configured" in outputs[0], "a fleet that refuses every upload says so"


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("port: not-a-port\n")
    r = subprocess.run([*EDGEKIT, "fleet", "up", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "port" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text("colour: blue\n")
    r = subprocess.run([*EDGEKIT, "fleet", "up", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "colour" in r.stderr


def test_cli_against_an_unreachable_fleet_is_one_line(tmp_path):
    env = {**os.environ, "EDGEKIT_FLEET_URL": f"http://127.0.0.1:{free_port()}", "EDGEKIT_FLEET_TOKEN": "x"}
    r = cli("fleet", "devices", env=env)
    assert r.returncode == 1 and "cannot reach the fleet API" in r.stderr and "Traceback" not in r.stderr
    r = cli("fleet", "push", str(tmp_path / "missing.ekb"), env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = cli("fleet", "devices", "--url", "ftp://fleet", env=env)
    assert r.returncode == 1 and "http://" in r.stderr
    r = cli("fleet", "rollout", "create", "--bundle", "tiny@1", "--waves", "10,5", env=env)
    assert r.returncode == 1 and "strictly increase" in r.stderr

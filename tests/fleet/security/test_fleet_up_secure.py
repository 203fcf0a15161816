"""``edgekit fleet up --secure`` as a real process, end to end with a provisioned agent process.

The fleet starts mosquitto with the mTLS config (CA created on this first secure start), its own ingest
and desired-state publisher connect with the fleet identity; ``edgekit fleet provision`` writes the
device folder; ``edgekit agent run`` with that ``agent.yaml`` connects over mTLS, is seen online with
telemetry, receives a rollout whose bundle URL carries its download token (the device holds no API
token), installs it; ``edgekit fleet revoke`` then cuts it off while the broker keeps running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.security.secure_broker import find_mosquitto

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from servers import free_port, wait_port  # noqa: E402

pytestmark = pytest.mark.integration

EDGEKIT = [str(Path(sys.executable).parent / "edgekit")]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKIT, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def secure_fleet(tmp_path, signing_keys):
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    _, _, keydir = signing_keys
    data = tmp_path / "fleet"
    (data / "trusted-keys").mkdir(parents=True)
    shutil.copy(keydir / "signing.pub", data / "trusted-keys" / "ci.pub")
    port, tls_port, fleet_port = free_port(), free_port(), free_port()
    env = {**os.environ, "EDGEKIT_FLEET_BROKER_FLEET_PORT": str(fleet_port), "EDGEKIT_FLEET_TICK_INTERVAL_S": "0.5"}
    log = tmp_path / "fleet-up.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [*EDGEKIT, "fleet", "up", "--secure", "--data-dir", str(data), "--port", str(port), "--host", "127.0.0.1",
             "--broker-tls-port", str(tls_port)], stdout=fh, stderr=subprocess.STDOUT, text=True, env=env)

    def token() -> str | None:
        for line in log.read_text().splitlines():
            if line.startswith("admin token"):
                return line.rsplit(" ", 1)[1].strip()
        if proc.poll() is not None:
            pytest.fail(f"fleet up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return None

    admin = _wait(token, 60, "fleet up to print its admin token")
    wait_port(port)
    cli_env = {**os.environ, "EDGEKIT_FLEET_URL": f"http://127.0.0.1:{port}", "EDGEKIT_FLEET_TOKEN": admin}
    yield {"proc": proc, "log": log, "data": data, "port": port, "tls_port": tls_port, "env": cli_env,
           "token": admin}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def run_agent(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(config: Path, log: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGEKIT_AGENT_STATE_DIR": str(tmp_path / "state"),
               "EDGEKIT_AGENT_PROFILE": "x86-avx2", "EDGEKIT_AGENT_SERVER__PORT": "0",
               "EDGEKIT_AGENT_MQTT__TELEMETRY_INTERVAL_S": "0.3", "EDGEKIT_AGENT_MQTT__RECONNECT_MAX_S": "1",
               "EDGEKIT_AGENT_OTA__SOAK_S": "0"}
        env.pop("EDGEKIT_FLEET_TOKEN", None)
        with open(log, "wb") as fh:
            proc = subprocess.Popen([*EDGEKIT, "agent", "run", "--log-level", "info", "--config", str(config)],
                                    stdout=fh, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_secure_fleet_up_provision_rollout_revoke(secure_fleet, run_agent, tiny_bundle, tmp_path):
    f, env = secure_fleet, secure_fleet["env"]
    fleet_log = f["log"].read_text()
    assert "no fleet CA" in fleet_log and "was created now" in fleet_log, "the first secure start says so"
    assert "INSECURE" not in fleet_log
    conf = (f["data"] / "broker" / "mosquitto-secure.conf").read_text()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
    assert f"listener {f['tls_port']} " in conf

    # a device folder from the CLI, pointed at the secure broker; no API token in it
    dev = tmp_path / "cam-z"
    r = _cli("fleet", "provision", "cam-z", "--out", str(dev), "--data-dir", str(f["data"]), "--profile", "x86-avx2",
             "--tags", "site=lab", "--broker-url", f"mqtts://localhost:{f['tls_port']}",
             "--fleet-url", f"http://127.0.0.1:{f['port']}",
             "--trusted-key", str(f["data"] / "trusted-keys" / "ci.pub"), env=env)
    assert r.returncode == 0, r.stderr
    agent_yaml = (dev / "agent.yaml").read_text()
    assert f["token"] not in agent_yaml and "Authorization" not in agent_yaml
    assert yaml.safe_load(agent_yaml)["mqtt"]["url"].startswith("mqtts://")

    agent_log = tmp_path / "agent.log"
    agent = run_agent(dev / "agent.yaml", agent_log)
    api = httpx.Client(base_url=f"http://127.0.0.1:{f['port']}", headers={"Authorization": f"Bearer {f['token']}"},
                       timeout=10)

    def device() -> dict | None:
        resp = api.get("/api/v1/devices/cam-z")
        return resp.json() if resp.status_code == 200 else None

    def telemetry_count() -> int:
        return api.get("/api/v1/telemetry/cam-z", params={"limit": 10_000}).json()["count"]

    _wait(lambda: (d := device()) and d["online"], 30, f"cam-z online in the fleet (agent log: {agent_log})")
    _wait(lambda: telemetry_count() >= 2, 15, "cam-z telemetry in the fleet")

    # a rollout: the fleet publishes the desired state with cam-z's download token; the agent downloads with it
    r = _cli("fleet", "push", str(tiny_bundle), env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("fleet", "rollout", "create", "--bundle", "tiny@1.0.0", "--selector", "id=cam-z", "--waves", "100",
             "--soak", "1s", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["id"]
    # without a token (and the device has no API token) the bundle is not served: the token is what opens it
    assert httpx.get(f"http://127.0.0.1:{f['port']}/api/v1/bundles/tiny/1.0.0/download").status_code == 401
    try:
        _wait(lambda: (d := device()) and d["active"] == {"name": "tiny", "version": "1.0.0"}
              and d["ota_state"] in ("installed", "idle"), 40, "cam-z to install tiny@1.0.0")
    except AssertionError:
        raise AssertionError(f"not installed; agent log:\n{agent_log.read_text()[-3000:]}") from None
    _wait(lambda: json.loads(_cli("fleet", "rollout", "status", rid, "--json", env=env).stdout)["state"]
          == "completed", 20, "the rollout to complete")
    events = api.get("/api/v1/telemetry/cam-z/events", params={"limit": 1000}).json()["events"]
    kinds = {e["kind"] for e in events}
    assert {"ota.accepted", "ota.installed"} <= kinds and "ota.download_failed" not in kinds, kinds
    assert "token=" in json.dumps(events) and "ekdt1." not in json.dumps(events), "events carry no token"

    # revoke: the running broker is reloaded, cam-z is cut off; the fleet and the broker keep running
    r = _cli("fleet", "revoke", "cam-z", "--data-dir", str(f["data"]), env=env)
    assert r.returncode == 0, r.stderr
    assert "broker reloaded" in r.stdout
    time.sleep(1.0)  # what was in flight before the reload may still land
    seen = telemetry_count()
    time.sleep(2.5)  # ~8 telemetry intervals
    assert telemetry_count() == seen, "a revoked device's telemetry still reaches the fleet"
    assert f["proc"].poll() is None and agent.poll() is None, "revocation is neither a fleet nor an agent crash"
    assert api.get("/healthz").status_code == 200
    api.close()


def test_secure_service_restarts_on_its_existing_ca(tmp_path, caplog):
    """In-process FleetService: the second secure start reuses the CA (no new one is announced) and its
    own clients connect again with the fleet identity (clients without one: ``test_secure_broker.py``)."""
    import logging

    from fleet.security.pki import FleetPKI
    from fleet.service import FleetService
    from fleet.settings import load_settings

    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    settings = load_settings(data_dir=tmp_path / "fleet", security="mtls", broker_tls_port=free_port(),
                             broker_fleet_port=free_port(), port=free_port(), tick_interval_s=0.5)
    serials = []
    for start in range(2):
        caplog.clear()
        service = FleetService(settings)
        with caplog.at_level(logging.WARNING, logger="fleet"):
            service.start()
        try:
            created = "was created now" in caplog.text
            assert created == (start == 0), caplog.text
            assert "INSECURE" not in caplog.text
            assert service.ingest is not None and service.publisher is not None
            serials.append(FleetPKI.open(settings.pki_dir).ca_cert.serial_number)
        finally:
            service.stop()
    assert serials[0] == serials[1], "the second start must reuse the fleet CA"

"""End to end: a real agent process (``edgekit agent run --config <provisioned agent.yaml>``) over mTLS.

The device folder comes from :func:`fleet.security.provision.provision` unchanged (relative paths); the
broker is the production :class:`SecureBroker` config on mosquitto; what the device does is observed
through the fleet identity, which is what the fleet manager's ingest sees.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zerotrust_helpers import Identity, connect

from fleet.security.files import write_private, write_public
from fleet.security.provision import provision

pytestmark = pytest.mark.integration

AGENT_CMD = [sys.executable, "-c", "from edgekit.cli import main; main()", "agent", "run", "--log-level", "info"]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class _Fleet:
    """The fleet identity subscribed to every device's status, telemetry and events."""

    def __init__(self, broker, pki, client_id: str = "edgekit-fleet-e2e"):
        ident = Identity(cert=pki.fleet_cert_path, key=pki.fleet_key_path, ca=pki.ca_cert_path)
        s = connect(broker, ident, client_id)
        assert not isinstance(s, str), s
        for kind in ("status", "telemetry", "events"):
            assert s.subscribe(f"edgekit/v1/+/{kind}")[0].value < 128
        self.session = s

    def of(self, device_id: str, kind: str) -> list[dict]:
        t = f"edgekit/v1/{device_id}/{kind}"
        with self.session.lock:
            return [json.loads(p) for topic, p in self.session.received if topic == t]

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def device_folder(pki, signing_keys, secure_broker, tmp_path):
    """``provision`` output for device ``cam-e2e`` pointing at the running secure broker."""
    _, pub, _ = signing_keys
    pub_file = tmp_path / "signing.pub"
    pub_file.write_bytes(pub.pem())
    r = provision(pki, "cam-e2e", out_dir=tmp_path / "device", broker_url=f"mqtts://localhost:{secure_broker.port}",
                  trusted_keys=[pub_file])
    return r


@pytest.fixture
def run_agent(tmp_path):
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(config: Path) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"agent-{len(procs)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGEKIT_AGENT_STATE_DIR": str(tmp_path / "state"),
               "EDGEKIT_AGENT_PROFILE": "x86-avx2", "EDGEKIT_AGENT_SERVER__PORT": "0",
               "EDGEKIT_AGENT_MQTT__TELEMETRY_INTERVAL_S": "0.3", "EDGEKIT_AGENT_MQTT__RECONNECT_MAX_S": "1"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen([*AGENT_CMD, "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT,
                                    env=env)
        procs.append((proc, log))
        return proc, log

    yield start
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _alive(proc: subprocess.Popen, log: Path) -> None:
    assert proc.poll() is None, f"agent exited with {proc.returncode}: {log.read_text()[-1500:]}"


def test_provisioned_agent_connects_with_mtls_and_is_cut_off_when_revoked(
    secure_broker, pki, device_folder, run_agent
):
    fleet = _Fleet(secure_broker, pki)
    try:
        proc, log = run_agent(device_folder.config)
        online = _wait(lambda: [s for s in fleet.of("cam-e2e", "status") if s.get("state") == "online"], 30,
                       "the agent's birth message")
        assert online[0]["device_id"] == "cam-e2e"
        _wait(lambda: len(fleet.of("cam-e2e", "telemetry")) >= 2, 10, "telemetry from the agent")
        _alive(proc, log)

        assert secure_broker.revoke("cam-e2e")  # CRL + ACL deny + SIGHUP, the broker keeps running
        time.sleep(0.8)  # what was already in flight before the reload may still arrive
        seen = len(fleet.of("cam-e2e", "telemetry"))
        time.sleep(2.0)  # ~6 telemetry intervals
        assert len(fleet.of("cam-e2e", "telemetry")) == seen, "a revoked device's telemetry still arrives"
        # and its certificate no longer opens a connection
        again = connect(secure_broker, Identity(cert=device_folder.cert, key=device_folder.key,
                                                ca=device_folder.ca), "cam-e2e")
        if not isinstance(again, str):
            again.close()
            raise AssertionError("the revoked certificate still connects")
        _alive(proc, log)  # being cut off is not a crash of the agent
    finally:
        fleet.close()


def test_renewed_certificate_is_used_on_reconnect_without_restarting_the_agent(
    secure_broker, pki, device_folder, run_agent, tmp_path
):
    # the device starts with a certificate that expires in a few seconds
    now = dt.datetime.now(dt.timezone.utc)
    short = pki.issue_device("cam-e2e", renew=True, valid_from=now - dt.timedelta(seconds=1),
                             valid_for=dt.timedelta(seconds=12))
    write_public(device_folder.cert, short.cert_pem)
    write_private(device_folder.key, short.key_pem)

    fleet = _Fleet(secure_broker, pki)
    proc, log = run_agent(device_folder.config)
    try:
        _wait(lambda: fleet.of("cam-e2e", "telemetry"), 30, "telemetry with the short-lived certificate")

        # renewal delivered into the device's folder (the same call as `edgekit fleet provision --renew`)
        renewed = provision(pki, "cam-e2e", out_dir=device_folder.out_dir, broker_url=f"mqtts://localhost:"
                            f"{secure_broker.port}", trusted_keys=list(device_folder.trusted_keys.glob("*.pub")),
                            renew=True)
        assert renewed.identity.serial != short.serial
        _wait(lambda: "reloaded" in log.read_text(), 10, "the agent to load the renewed certificate")

        # the old certificate expires; then the connection drops (broker restart) and the agent reconnects
        time.sleep(max(0.0, (short.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.0)
        fleet.close()
        secure_broker.stop()
        secure_broker.start()
        fleet = _Fleet(secure_broker, pki, "edgekit-fleet-e2e-2")
        _wait(lambda: [s for s in fleet.of("cam-e2e", "status") if s.get("state") == "online"], 20,
              "the agent's birth after reconnecting with the renewed certificate")
        _wait(lambda: len(fleet.of("cam-e2e", "telemetry")) >= 2, 10, "telemetry after the renewal")
        _alive(proc, log)  # same process throughout: no restart was needed
        assert "certificate expired" not in secure_broker.log_text()
    finally:
        fleet.close()


def test_agent_with_an_expired_certificate_is_refused_until_a_renewal_arrives(secure_broker, pki, device_folder,
                                                                             run_agent):
    """Control for the test above (without the renewal the connection is refused), then the renewal is
    delivered while the agent is cut off: it connects with it, still without a restart."""
    now = dt.datetime.now(dt.timezone.utc)
    old = pki.issue_device("cam-e2e", renew=True, valid_from=now - dt.timedelta(days=2),
                           valid_for=dt.timedelta(days=1))
    write_public(device_folder.cert, old.cert_pem)
    write_private(device_folder.key, old.key_pem)
    fleet = _Fleet(secure_broker, pki)
    try:
        proc, log = run_agent(device_folder.config)
        _wait(lambda: "certificate" in secure_broker.log_text().lower() and "expired" in
              secure_broker.log_text().lower(), 30, "the broker to refuse the expired certificate")
        time.sleep(0.5)
        assert fleet.of("cam-e2e", "status") == [] and fleet.of("cam-e2e", "telemetry") == []
        _alive(proc, log)  # the agent keeps retrying; it does not crash

        provision(pki, "cam-e2e", out_dir=device_folder.out_dir, broker_url=f"mqtts://localhost:"
                  f"{secure_broker.port}", trusted_keys=list(device_folder.trusted_keys.glob("*.pub")), renew=True)
        _wait(lambda: [s for s in fleet.of("cam-e2e", "status") if s.get("state") == "online"], 20,
              "the agent to connect with the renewal delivered while it was refused")
        _wait(lambda: fleet.of("cam-e2e", "telemetry"), 10, "telemetry after the renewal")
        _alive(proc, log)
    finally:
        fleet.close()


def test_agent_renews_its_certificate_over_mqtt_and_rides_through_the_old_ones_expiry(
    secure_broker, pki, device_folder, run_agent, tmp_path
):
    """The renewal travels over the device's own channel: the agent makes a key and CSR, the fleet's
    CertificateIssuer signs it, the agent checks and swaps it in live (no reconnect), and it is what the
    agent presents once the old certificate has expired."""
    from fleet.security.renewal import CertificateIssuer
    from fleet.settings import FleetSettings

    now = dt.datetime.now(dt.timezone.utc)
    short = pki.issue_device("cam-e2e", renew=True, valid_from=now - dt.timedelta(seconds=1),
                             valid_for=dt.timedelta(seconds=20))
    write_public(device_folder.cert, short.cert_pem)
    write_private(device_folder.key, short.key_pem)
    settings = FleetSettings(data_dir=tmp_path, security="mtls", broker_url=f"mqtts://127.0.0.1:{secure_broker.port}")
    issuer = CertificateIssuer(settings, pki, valid_for=dt.timedelta(days=1)).start()
    fleet = _Fleet(secure_broker, pki)
    os.environ["EDGEKIT_AGENT_MQTT__CERT_RENEW_FRACTION"] = "0.9"  # the 20 s certificate is due at once
    try:
        proc, log = run_agent(device_folder.config)
    finally:
        del os.environ["EDGEKIT_AGENT_MQTT__CERT_RENEW_FRACTION"]
    try:
        events = _wait(lambda: [e for e in fleet.of("cam-e2e", "events") if e["kind"] == "cert.renewed"], 30,
                       "the agent's cert.renewed event")
        kinds = [e["kind"] for e in fleet.of("cam-e2e", "events") if e["kind"].startswith("cert.")]
        assert kinds[:2] == ["cert.renewal_requested", "cert.renewed"], kinds
        from edgekit.certs import read_cert

        installed = read_cert(device_folder.cert.read_bytes())
        assert installed.serial == events[0]["data"]["serial"] != short.serial
        assert installed.serial in {r.serial for r in pki.active("cam-e2e")} and issuer.issued == 1
        assert device_folder.key.read_bytes() != short.key_pem  # a new key, made on the device
        assert device_folder.key.stat().st_mode & 0o777 == 0o600
        assert not list(device_folder.out_dir.glob("*.renewal.json")) and not list(device_folder.out_dir.glob("*.new"))
        _wait(lambda: "reloaded" in log.read_text(), 10, "the agent to load the renewed certificate")
        births = [s for s in fleet.of("cam-e2e", "status") if s.get("state") == "online"]
        assert len(births) == 1, "the renewal must not cost a reconnect"

        # the old certificate expires; the connection drops (broker restart); the agent comes back with the new one
        time.sleep(max(0.0, (short.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.0)
        fleet.close()
        issuer.stop()
        secure_broker.stop()
        secure_broker.start()
        fleet = _Fleet(secure_broker, pki, "edgekit-fleet-e2e-2")
        _wait(lambda: [s for s in fleet.of("cam-e2e", "status") if s.get("state") == "online"], 20,
              "the agent's birth after reconnecting with the certificate renewed over MQTT")
        _wait(lambda: len(fleet.of("cam-e2e", "telemetry")) >= 2, 10, "telemetry after the renewal")
        _alive(proc, log)
        assert "certificate expired" not in secure_broker.log_text()
    finally:
        issuer.stop()
        fleet.close()

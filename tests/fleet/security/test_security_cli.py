"""``edgekit fleet ca init | provision | revoke | signing-keys``: exit codes, messages, and a revocation
that reaches a running broker through its pid file."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from types import SimpleNamespace

import pytest
from servers import free_port, wait_port
from typer.testing import CliRunner
from zerotrust_helpers import MOSQUITTO, Identity, connect

from edgekit.signing import generate_keypair, load_public_key
from fleet.security.cli import fleet_security_app
from fleet.security.pki import FleetPKI

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(fleet_security_app, list(args))


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "fleet-data"


def test_ca_init_provision_renew_revoke(data_dir, tmp_path):
    _, pub = generate_keypair(tmp_path / "sig")
    r = _run("ca", "init", "--data-dir", str(data_dir), "--hostname", "broker.lan")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((data_dir / "pki" / "ca.key").stat().st_mode) == 0o600
    assert (data_dir / "broker" / "mosquitto-secure.conf").exists()
    again = _run("ca", "init", "--data-dir", str(data_dir))
    assert again.exit_code == 1 and "already exists" in again.output

    out = tmp_path / "cam-1"
    r = _run("provision", "cam-1", "--out", str(out), "--profile", "x86-avx2", "--tags", "site=lab,canary",
             "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 0, r.output
    assert "provisioned cam-1" in r.output
    assert stat.S_IMODE((out / "device.key").stat().st_mode) == 0o600
    cfg = (out / "agent.yaml").read_text()
    assert "mqtts://127.0.0.1:8883" in cfg and "site=lab" in cfg and "http://127.0.0.1:8080/" in cfg

    r = _run("provision", "cam-1", "--out", str(out), "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "--renew" in r.output and "Traceback" not in r.output
    r = _run("provision", "cam-1", "--out", str(out), "--renew", "--trusted-key", str(pub),
             "--data-dir", str(data_dir))
    assert r.exit_code == 0 and "renewed cam-1" in r.output

    listing = _run("ca", "list", "--data-dir", str(data_dir)).output
    assert listing.count("cam-1\tdevice") == 2 and "@edgekit-fleet\tfleet" in listing
    assert "edgekit-broker\tserver" in listing and "valid" in listing
    soon = _run("ca", "list", "--expiring-days", "30", "--data-dir", str(data_dir)).output
    assert "cam-1" not in soon and soon.strip().endswith("0 certificate(s)")
    assert stat.S_IMODE((data_dir / "pki" / "download-token.key").stat().st_mode) == 0o600

    r = _run("revoke", "cam-1", "--data-dir", str(data_dir))
    assert r.exit_code == 0, r.output
    assert _run("ca", "list", "--data-dir", str(data_dir)).output.count("\trevoked") == 2
    assert "2 certificate(s) revoked" in r.output and "no running secure broker" in r.output
    assert "user cam-1\ntopic deny #" in (data_dir / "broker" / "acl").read_text()
    (data_dir / "broker" / "mosquitto-secure.pid").write_text("not-a-pid")
    r = _run("revoke", "cam-1", "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "NOT reloaded" in r.output and "Traceback" not in r.output
    r = _run("revoke", "no-such-cam", "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "no certificate was ever issued" in r.output

    (data_dir / "broker" / "mosquitto-secure.pid").unlink()
    r = _run("reinstate", "cam-1", "--data-dir", str(data_dir))
    assert r.exit_code == 0, r.output
    assert "user cam-1" not in (data_dir / "broker" / "acl").read_text()
    r = _run("reinstate", "cam-1", "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "is not revoked" in r.output
    shutil.rmtree(out)
    r = _run("provision", "cam-1", "--out", str(out), "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 0, r.output


def test_commands_without_a_ca_or_with_bad_input_fail_cleanly(data_dir, tmp_path):
    _, pub = generate_keypair(tmp_path / "sig")
    r = _run("provision", "cam-1", "--out", str(tmp_path / "o"), "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "fleet ca init" in r.output
    assert _run("ca", "init", "--data-dir", str(data_dir)).exit_code == 0
    r = _run("provision", "bad/id", "--out", str(tmp_path / "o"), "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "invalid device id" in r.output
    r = _run("provision", "cam-1", "--out", str(tmp_path / "o"), "--broker-url", "mqtt://plain:1883",
             "--trusted-key", str(pub), "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "mqtts://" in r.output
    r = _run("provision", "cam-1", "--out", str(tmp_path / "o"), "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "no trusted bundle-signing public key" in r.output
    r = _run("ca", "init", "--broker-port", "70000", "--data-dir", str(data_dir))
    assert r.exit_code == 2  # usage error from the option's range


def test_signing_keys_rotation_and_default_trust_for_provision(data_dir, tmp_path):
    _, old = generate_keypair(tmp_path / "old")
    _, new = generate_keypair(tmp_path / "new")
    old_id, new_id = load_public_key(old).id, load_public_key(new).id
    assert _run("ca", "init", "--data-dir", str(data_dir)).exit_code == 0
    assert _run("signing-keys", "add", str(old), "--data-dir", str(data_dir)).exit_code == 0
    assert _run("signing-keys", "add", str(new), "--data-dir", str(data_dir)).exit_code == 0
    r = _run("signing-keys", "retire", old_id, "--data-dir", str(data_dir))
    assert r.exit_code == 0, r.output
    listing = _run("signing-keys", "list", "--data-dir", str(data_dir)).output
    assert f"trusted {new_id}" in listing and f"retired {old_id}" in listing
    r = _run("signing-keys", "retire", new_id, "--data-dir", str(data_dir))
    assert r.exit_code == 1 and "last trusted key" in r.output
    # provision without --trusted-key hands the device the fleet's currently trusted keys only
    out = tmp_path / "cam-k"
    assert _run("provision", "cam-k", "--out", str(out), "--data-dir", str(data_dir)).exit_code == 0
    assert [p.name for p in (out / "trusted-keys").glob("*.pub")] == [f"{new_id}.pub"]


@pytest.mark.integration
def test_cli_revoke_reloads_the_running_broker(data_dir, tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    _, pub = generate_keypair(tmp_path / "sig")
    port, fleet_port = free_port(), free_port()
    assert _run("ca", "init", "--data-dir", str(data_dir), "--broker-port", str(port), "--fleet-port", str(fleet_port),
                "--broker-bind", "127.0.0.1").exit_code == 0
    out = tmp_path / "cam-live"
    assert _run("provision", "cam-live", "--out", str(out), "--trusted-key", str(pub),
                "--data-dir", str(data_dir)).exit_code == 0
    conf = data_dir / "broker" / "mosquitto-secure.conf"
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        broker = SimpleNamespace(host="127.0.0.1", port=port)
        ident = Identity(cert=out / "device.crt", key=out / "device.key", ca=out / "ca.crt")
        s = connect(broker, ident, "cam-live")
        assert not isinstance(s, str), s
        s.close()
        pid_file = data_dir / "broker" / "mosquitto-secure.pid"
        deadline = time.monotonic() + 3
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = _run("revoke", "cam-live", "--data-dir", str(data_dir))
        assert r.exit_code == 0 and "broker reloaded" in r.output, r.output
        deadline = time.monotonic() + 3
        while not isinstance(result := connect(broker, ident, "cam-live"), str):
            result.close()
            assert time.monotonic() < deadline, "revoked device still connects after `revoke`"
            time.sleep(0.1)
        assert proc.poll() is None  # reloaded, not restarted
        # the fleet identity still connects (on its own listener) after the reload
        pki = FleetPKI.open(data_dir / "pki")
        fleet = connect(SimpleNamespace(host="127.0.0.1", port=fleet_port), Identity(pki.fleet_cert_path, pki.fleet_key_path, pki.ca_cert_path), "fleet-x")
        assert not isinstance(fleet, str), fleet
        fleet.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_revoke_shows_the_device_offline_in_the_registry_and_audits_it(data_dir, tmp_path):
    from fleet.audit import verify_chain
    from fleet.db.base import Database
    from fleet.db.migrate import upgrade
    from fleet.db.models import Device
    from fleet.db.web_models import AuditEntry

    _, pub = generate_keypair(tmp_path / "sig")
    assert _run("ca", "init", "--data-dir", str(data_dir)).exit_code == 0
    assert _run("provision", "cam-7", "--out", str(tmp_path / "cam-7"), "--trusted-key", str(pub),
                "--data-dir", str(data_dir)).exit_code == 0
    # no registry yet (fleet never started here): the revocation itself still happens, and says so
    r = _run("revoke", "cam-7", "--data-dir", str(data_dir))
    assert r.exit_code == 0 and "registry NOT updated" in r.output, r.output
    _run("reinstate", "cam-7", "--data-dir", str(data_dir))

    db = Database(f"sqlite:///{data_dir / 'fleet.db'}")
    upgrade(db)
    with db.session() as s:
        s.add(Device(id="cam-7", online=True))
        s.add(Device(id="cam-8", online=True))
    assert _run("provision", "cam-7", "--out", str(tmp_path / "cam-7b"), "--trusted-key", str(pub),
                "--data-dir", str(data_dir)).exit_code == 0
    r = _run("revoke", "cam-7", "--data-dir", str(data_dir))
    assert r.exit_code == 0 and "registry: marked offline" in r.output, r.output
    with db.session() as s:
        assert s.get(Device, "cam-7").online is False and s.get(Device, "cam-7").last_error == "certificate revoked"
        assert s.get(Device, "cam-8").online is True
        entry = s.query(AuditEntry).filter_by(action="device.revoke").one()
        assert entry.target == "device:cam-7" and entry.actor == "cli"
    assert verify_chain(db).ok
    db.dispose()

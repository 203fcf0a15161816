"""``provision``: the device folder, its file modes, the agent config it writes, renewal, bad input."""

from __future__ import annotations

import importlib
import stat
import threading

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from zerotrust_helpers import Identity, connect

from edgekit.errors import ConfigError, ProfileError
from edgekit.signing import generate_keypair, load_public_key
from edgekit.wire import Status
from fleet.security.provision import provision

BROKER = "mqtts://broker.lan:8883"
FLEET = "https://fleet.lan:8443"


@pytest.fixture
def pub(tmp_path):
    _, pub = generate_keypair(tmp_path / "signing")
    return pub


def _cn(path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_provision_writes_key_0600_cert_ca_keys_and_config(pki, pub, tmp_path):
    out = tmp_path / "cam-1"
    r = provision(pki, "cam-1", out_dir=out, broker_url=BROKER, fleet_url=FLEET, trusted_keys=[pub],
                  profile="raspberry-pi-5", tags=["site=lab", "canary", "canary"])
    assert stat.S_IMODE(r.key.stat().st_mode) == 0o600
    assert _cn(r.cert) == "cam-1"
    x509.load_pem_x509_certificate(r.cert.read_bytes()).verify_directly_issued_by(pki.ca_cert)
    assert r.ca.read_bytes() == pki.ca_cert_path.read_bytes()
    key_id = load_public_key(pub).id
    assert [p.name for p in r.trusted_keys.iterdir()] == [f"{key_id}.pub"]
    cfg = yaml.safe_load(r.config.read_text())
    assert cfg["profile"] == "raspberry-pi-5"
    # relative to agent.yaml by default: the folder works wherever it is copied
    assert cfg["mqtt"] == {
        "url": BROKER, "device_id": "cam-1", "ca_file": "ca.crt",
        "client_cert": "device.crt", "client_key": "device.key",
        "tags": ["site=lab", "canary"],
    }
    assert cfg["ota"]["trusted_keys"] == ["trusted-keys"]
    assert cfg["ota"]["allowed_url_prefixes"] == [FLEET + "/"]
    assert cfg["ota"]["client_cert"] == "device.crt"  # https fleet: mTLS downloads


def test_config_is_accepted_by_the_agents_own_settings(pki, pub, tmp_path):
    agent_config = importlib.import_module("devices.agent.config")
    r = provision(pki, "cam-2", out_dir=tmp_path / "d", broker_url=BROKER, fleet_url=FLEET,
                  trusted_keys=[pub], tags=["a"], install_dir=tmp_path / "etc-edgekit")
    cfg = agent_config.load_config(r.config)
    assert cfg.mqtt.device_id == "cam-2" and cfg.mqtt.url == BROKER
    assert cfg.mqtt.client_key == tmp_path / "etc-edgekit" / "device.key"  # install_dir paths
    assert cfg.ota.trusted_keys == [tmp_path / "etc-edgekit" / "trusted-keys"]


def test_default_relative_config_resolves_wherever_the_folder_is_copied(pki, pub, tmp_path):
    import shutil

    agent_config = importlib.import_module("devices.agent.config")
    r = provision(pki, "cam-4", out_dir=tmp_path / "made-here", broker_url=BROKER, fleet_url=FLEET,
                  trusted_keys=[pub])
    moved = tmp_path / "on-device" / "etc"
    shutil.copytree(r.out_dir, moved)
    cfg = agent_config.load_config(moved / "agent.yaml")
    assert cfg.mqtt.ca_file == moved.resolve() / "ca.crt"
    assert cfg.mqtt.client_cert == moved.resolve() / "device.crt"
    assert cfg.mqtt.client_key == moved.resolve() / "device.key"
    assert cfg.ota.client_key == moved.resolve() / "device.key"
    assert cfg.ota.trusted_keys == [moved.resolve() / "trusted-keys"]
    assert all(p.exists() for p in (cfg.mqtt.ca_file, cfg.mqtt.client_cert, cfg.mqtt.client_key))


def test_existing_device_folder_needs_renew_and_renew_rotates_the_key(pki, pub, tmp_path):
    out = tmp_path / "cam-3"
    first = provision(pki, "cam-3", out_dir=out, broker_url=BROKER, trusted_keys=[pub])
    old_key, old_cert = first.key.read_bytes(), first.cert.read_bytes()
    with pytest.raises(ConfigError, match="--renew"):
        provision(pki, "cam-3", out_dir=out, broker_url=BROKER, trusted_keys=[pub])
    assert first.key.read_bytes() == old_key  # the refused call touched nothing
    second = provision(pki, "cam-3", out_dir=out, broker_url=BROKER, trusted_keys=[pub], renew=True)
    assert second.key.read_bytes() != old_key and second.cert.read_bytes() != old_cert
    assert stat.S_IMODE(second.key.stat().st_mode) == 0o600
    assert len(pki.active("cam-3")) == 2
    # a folder of another device is not silently taken over by a renewal
    provision(pki, "cam-4", out_dir=tmp_path / "cam-4", broker_url=BROKER, trusted_keys=[pub])
    with pytest.raises(ConfigError, match="belongs to device 'cam-3'"):
        provision(pki, "cam-4", out_dir=out, broker_url=BROKER, trusted_keys=[pub], renew=True)


def test_retired_key_disappears_from_the_device_on_reprovision(pki, tmp_path):
    _, old = generate_keypair(tmp_path / "old")
    _, new = generate_keypair(tmp_path / "new")
    out = tmp_path / "cam-5"
    provision(pki, "cam-5", out_dir=out, broker_url=BROKER, trusted_keys=[old, new])
    assert len(list((out / "trusted-keys").glob("*.pub"))) == 2
    provision(pki, "cam-5", out_dir=out, broker_url=BROKER, trusted_keys=[new], renew=True)
    assert [p.name for p in (out / "trusted-keys").glob("*.pub")] == [f"{load_public_key(new).id}.pub"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"broker_url": "mqtt://broker.lan:1883"}, ConfigError, "mqtts://"),
        ({"broker_url": "mqtts://:8883"}, ConfigError, "with a host"),
        ({"broker_url": "mqtts://h:99999"}, ConfigError, "bad port"),
        ({"fleet_url": "ftp://fleet"}, ConfigError, "http"),
        ({"profile": "toaster-9000"}, ProfileError, "unknown device profile"),
        ({"tags": ["ok", "bad tag!"]}, ConfigError, "invalid tag"),
        ({"trusted_keys": []}, ConfigError, "no trusted bundle-signing public key"),
        ({"device_id": "a/b"}, ConfigError, "invalid device id"),
    ],
)
def test_bad_input_is_a_specific_error_and_writes_nothing(pki, pub, tmp_path, kwargs, error, match):
    args = {"device_id": "cam-9", "broker_url": BROKER, "trusted_keys": [pub]} | kwargs
    device_id = args.pop("device_id")
    with pytest.raises(error, match=match):
        provision(pki, device_id, out_dir=tmp_path / "out", **args)
    assert not (tmp_path / "out" / "device.key").exists()


def test_trusted_key_that_is_not_a_key_is_refused(pki, tmp_path):
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM ed25519 public key"):
        provision(pki, "cam-9", out_dir=tmp_path / "out", broker_url=BROKER, trusted_keys=[junk])


@pytest.mark.integration
def test_the_agents_mqtt_link_connects_with_a_provisioned_folder(secure_broker, pki, pub, tmp_path):
    """End to end: provision → the agent's own config loader and MQTT link → the fleet sees its birth."""
    agent_config = importlib.import_module("devices.agent.config")
    agent_mqtt = importlib.import_module("devices.agent.mqtt")
    agent_spool = importlib.import_module("devices.agent.spool")
    fleet = connect(secure_broker, Identity(pki.fleet_cert_path, pki.fleet_key_path, pki.ca_cert_path), "fleet")
    assert not isinstance(fleet, str), fleet
    fleet.subscribe("$share/edgekit-fleet/edgekit/v1/+/status")
    r = provision(pki, "cam-e2e", out_dir=tmp_path / "dev", trusted_keys=[pub],
                  broker_url=f"mqtts://127.0.0.1:{secure_broker.port}")
    cfg = agent_config.load_config(r.config)
    desired = threading.Event()
    link = agent_mqtt.MqttLink(
        cfg.mqtt, agent_spool.Spool(tmp_path / "spool.db"),
        birth=lambda: Status(device_id="cam-e2e", state="online"), on_desired=lambda raw: desired.set(),
    ).start()
    try:
        assert fleet.wait_for(lambda got: any(t == "edgekit/v1/cam-e2e/status" for t, _ in got), timeout=5)
        assert fleet.publish("edgekit/v1/cam-e2e/desired", b"{}", retain=True) in (0, 16)
        assert desired.wait(5), "the agent did not receive its desired state over mTLS"
    finally:
        link.stop()
        fleet.close()


def test_provision_from_a_device_csr_writes_no_key(pki, pub, tmp_path):
    from fleet.security.pki import create_csr

    key_pem, csr_pem = create_csr("cam-csr")
    out = tmp_path / "cam-csr"
    r = provision(pki, "cam-csr", out_dir=out, broker_url=BROKER, trusted_keys=[pub], csr_pem=csr_pem)
    assert not r.key.exists()
    assert r.identity.key_pem is None and _cn(r.cert) == "cam-csr"


@pytest.mark.integration
def test_csr_renewed_certificate_connects_while_the_old_one_still_works(secure_broker, pki, pub, tmp_path):
    from fleet.security.pki import create_csr

    out = tmp_path / "dev"
    first = provision(pki, "cam-r", out_dir=out, broker_url=BROKER, trusted_keys=[pub])
    old = Identity(cert=tmp_path / "old.crt", key=tmp_path / "old.key", ca=first.ca)
    old.cert.write_bytes(first.cert.read_bytes())
    old.key.write_bytes(first.key.read_bytes())
    key_pem, csr_pem = create_csr("cam-r")  # made "on the device"
    provision(pki, "cam-r", out_dir=out, broker_url=BROKER, trusted_keys=[pub], csr_pem=csr_pem, renew=True)
    (out / "device.key").write_bytes(key_pem)  # the device installs its own key next to the new cert
    new = Identity(cert=out / "device.crt", key=out / "device.key", ca=first.ca)
    for n, ident in enumerate((old, new)):
        s = connect(secure_broker, ident, f"cam-r-{n}")
        assert not isinstance(s, str), s
        s.close()

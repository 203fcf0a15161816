"""The agent's TLS client identity: a renewed certificate is loaded into the live context, a broken or
half-delivered one is refused and the working pair kept. (The end-to-end renewal against mosquitto is
tests/fleet/security/test_agent_mtls_e2e.py.)"""

from __future__ import annotations

import os

import pytest

from devices.agent.config import MqttConfig
from devices.agent.mqtt import MqttLink, TlsIdentity
from devices.agent.spool import Spool
from edgekit.errors import AgentError
from edgekit.wire import Status
from fleet.security.files import write_private, write_public
from fleet.security.pki import FleetPKI


@pytest.fixture
def device(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    folder = tmp_path / "dev"
    first = pki.issue_device("cam-t")
    write_public(folder / "device.crt", first.cert_pem)
    write_private(folder / "device.key", first.key_pem)
    return pki, folder


def test_renewed_pair_is_loaded_once(device):
    pki, folder = device
    ident = TlsIdentity(pki.ca_cert_path, folder / "device.crt", folder / "device.key")
    assert ident.reload_if_changed() is False  # nothing changed
    new = pki.issue_device("cam-t", renew=True)
    write_public(folder / "device.crt", new.cert_pem)
    write_private(folder / "device.key", new.key_pem)
    assert ident.reload_if_changed() is True
    assert ident.reloads == 1
    assert ident.reload_if_changed() is False  # same files: not loaded again


def test_certificate_without_its_key_yet_is_refused_and_retried(device, caplog):
    pki, folder = device
    ident = TlsIdentity(pki.ca_cert_path, folder / "device.crt", folder / "device.key")
    new = pki.issue_device("cam-t", renew=True)
    write_public(folder / "device.crt", new.cert_pem)  # the key has not arrived yet
    assert ident.reload_if_changed() is False
    assert "not loaded" in caplog.text
    write_private(folder / "device.key", new.key_pem)  # now it has
    assert ident.reload_if_changed() is True


def test_missing_files_during_delivery_are_not_an_error(device):
    pki, folder = device
    ident = TlsIdentity(pki.ca_cert_path, folder / "device.crt", folder / "device.key")
    os.unlink(folder / "device.key")
    assert ident.reload_if_changed() is False


def test_bad_tls_files_at_start_are_one_agent_error(device, tmp_path):
    pki, folder = device
    with pytest.raises(AgentError, match="MQTT TLS setup failed"):
        TlsIdentity(pki.ca_cert_path, folder / "device.crt", tmp_path / "nope.key")
    cfg = MqttConfig(url="mqtts://localhost:8883", device_id="cam-t", ca_file=tmp_path / "no-ca.crt",
                     client_cert=folder / "device.crt", client_key=folder / "device.key")
    with pytest.raises(AgentError, match="MQTT TLS setup failed"):
        MqttLink(cfg, Spool(tmp_path / "spool.db"), birth=lambda: Status(device_id="cam-t", state="online"),
                 on_desired=lambda _b: None)


def test_link_uses_one_context_that_reload_updates(device, tmp_path):
    pki, folder = device
    cfg = MqttConfig(url="mqtts://localhost:8883", device_id="cam-t", ca_file=pki.ca_cert_path,
                     client_cert=folder / "device.crt", client_key=folder / "device.key")
    link = MqttLink(cfg, Spool(tmp_path / "spool.db"), birth=lambda: Status(device_id="cam-t", state="online"),
                    on_desired=lambda _b: None)
    assert link.tls is not None and link.client._ssl_context is link.tls.context
    new = pki.issue_device("cam-t", renew=True)
    write_public(folder / "device.crt", new.cert_pem)
    write_private(folder / "device.key", new.key_pem)
    assert link.reload_tls() is True

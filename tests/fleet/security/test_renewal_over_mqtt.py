"""Certificate renewal over the device's own channel, against the real secure mosquitto.

The fleet's :class:`~fleet.security.renewal.CertificateIssuer` answers CSRs on ``edgekit/v1/<id>/csr``
with retained answers on ``edgekit/v1/<id>/cert``. Devices here are plain mTLS sessions speaking the
wire contract, so each refusal is checked on its own; the agent's side runs end to end in
``test_agent_mtls_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from zerotrust_helpers import Identity, connect, save_identity

from edgekit import wire
from edgekit.certs import check_issued, create_csr, csr_fingerprint
from fleet.security.renewal import CertificateIssuer, request_renewal
from fleet.settings import FleetSettings

pytestmark = pytest.mark.integration


def _device(pki, device_id: str, tmp_path) -> Identity:
    return save_identity(pki.issue_device(device_id), tmp_path / device_id, pki.ca_cert_path)


def _session(broker, ident: Identity, client_id: str):
    s = connect(broker, ident, client_id)
    assert not isinstance(s, str), s
    return s


def _csr_payload(device_id: str, csr_device: str | None = None, **kw) -> tuple[bytes, bytes, str]:
    key_pem, csr_pem = create_csr(csr_device or device_id)
    rid = kw.pop("request_id", None) or csr_fingerprint(csr_pem)
    req = wire.CertRequest(device_id=device_id, request_id=rid, csr_pem=csr_pem.decode(), **kw)
    return wire.encode(req), key_pem, rid


def _answers(received, device_id: str) -> list[dict]:
    """The non-empty ``cert`` answers in a session's ``received`` (take the copy ``wait_for`` passes, or
    :func:`_got`: the session lock is not re-entrant)."""
    t = f"edgekit/v1/{device_id}/cert"
    return [json.loads(p) for topic, p in received if topic == t and p]


def _got(session, device_id: str) -> list[dict]:
    with session.lock:
        return _answers(list(session.received), device_id)


@pytest.fixture
def issuer(secure_broker, pki, tmp_path):
    settings = FleetSettings(data_dir=tmp_path, security="mtls", broker_url=f"mqtts://127.0.0.1:{secure_broker.port}")
    with CertificateIssuer(settings, pki, valid_for=dt.timedelta(days=30), min_interval_s=60) as iss:
        yield iss


def test_device_gets_a_certificate_for_its_own_key_and_a_resend_gets_the_same_answer(secure_broker, pki, issuer,
                                                                                      tmp_path):
    dev = _session(secure_broker, _device(pki, "cam-a", tmp_path), "cam-a")
    try:
        assert dev.subscribe("edgekit/v1/cam-a/cert")[0].value < 128
        payload, key_pem, rid = _csr_payload("cam-a")
        assert dev.publish("edgekit/v1/cam-a/csr", payload) < 128
        assert dev.wait_for(lambda r: _answers(r, "cam-a"), timeout=10)
        (answer,) = _got(dev, "cam-a")
        assert answer["request_id"] == rid and answer["error"] is None
        facts = check_issued(answer["cert_pem"].encode(), ca_pem=pki.ca_cert_path.read_bytes(), device_id="cam-a",
                             key_pem=key_pem)
        assert facts.serial == answer["serial"] and len(pki.active("cam-a")) == 2  # overlaps the old one
        assert (facts.not_after - facts.not_before) <= dt.timedelta(days=30, minutes=6)

        assert dev.publish("edgekit/v1/cam-a/csr", payload) < 128  # the answer was missed: asked again
        assert dev.wait_for(lambda r: len(_answers(r, "cam-a")) == 2, timeout=10)
        assert _got(dev, "cam-a")[1]["serial"] == facts.serial and issuer.issued == 1
    finally:
        dev.close()


def test_refusals_come_back_with_the_reason(secure_broker, pki, issuer, tmp_path):
    dev = _session(secure_broker, _device(pki, "cam-b", tmp_path), "cam-b")
    try:
        dev.subscribe("edgekit/v1/cam-b/cert")
        cases = [
            (_csr_payload("cam-b", csr_device="cam-other")[0], "must be exactly the device id"),
            (_csr_payload("cam-b", request_id="0123456789abcdef")[0], "not the fingerprint"),
        ]
        for i, (payload, reason) in enumerate(cases, start=1):
            assert dev.publish("edgekit/v1/cam-b/csr", payload) < 128
            assert dev.wait_for(lambda r, n=i: len(_answers(r, "cam-b")) == n, timeout=10), reason
            got = _got(dev, "cam-b")[-1]
            assert got["cert_pem"] is None and reason in got["error"], got
        # one issuance, then a second key within min_interval_s is refused (no flooding the CA)
        assert dev.publish("edgekit/v1/cam-b/csr", _csr_payload("cam-b")[0]) < 128
        assert dev.wait_for(lambda r: len(_answers(r, "cam-b")) == 3, timeout=10)
        assert _got(dev, "cam-b")[-1]["cert_pem"]
        assert dev.publish("edgekit/v1/cam-b/csr", _csr_payload("cam-b")[0]) < 128
        assert dev.wait_for(lambda r: len(_answers(r, "cam-b")) == 4, timeout=10)
        assert "limited to one per 60s" in _got(dev, "cam-b")[-1]["error"]
        assert issuer.issued == 1 and issuer.refused == 3
    finally:
        dev.close()


def test_acl_confines_renewal_to_the_devices_own_topics(secure_broker, pki, issuer, tmp_path):
    a = _session(secure_broker, _device(pki, "cam-c", tmp_path), "cam-c")
    b = _session(secure_broker, _device(pki, "cam-d", tmp_path), "cam-d")
    try:
        # cam-c cannot ask for cam-d's certificate through cam-d's topic (the payload even names cam-d)
        assert a.publish("edgekit/v1/cam-d/csr", _csr_payload("cam-d")[0]) == 135  # v5: not authorised
        # nor forge an answer to anyone (itself included)
        forged = wire.encode(wire.CertAnswer(device_id="cam-c", renew=True))
        assert a.publish("edgekit/v1/cam-c/cert", forged) == 135
        assert a.publish("edgekit/v1/cam-d/cert", forged) == 135
        # nor read cam-d's answers: mosquitto may grant the SUBACK but checks read access on every delivery
        a.subscribe("edgekit/v1/cam-d/cert")
        a.subscribe("edgekit/v1/+/cert")
        a.subscribe("edgekit/v1/cam-c/cert")
        b.subscribe("edgekit/v1/cam-d/cert")
        # a CSR on its own topic that names another device in the payload is refused by the issuer
        assert a.publish("edgekit/v1/cam-c/csr", _csr_payload("cam-d")[0]) < 128
        assert a.wait_for(lambda r: _answers(r, "cam-c"), timeout=10)
        assert "does not match the topic" in _got(a, "cam-c")[0]["error"]
        assert len(pki.active("cam-d")) == 1 and issuer.issued == 0
        # cam-d's own renewal (the positive control, last) reaches cam-d and nobody else
        assert b.publish("edgekit/v1/cam-d/csr", _csr_payload("cam-d")[0]) < 128
        assert b.wait_for(lambda r: _answers(r, "cam-d"), timeout=10)
        assert _got(b, "cam-d")[0]["cert_pem"] and issuer.issued == 1
        assert not a.wait_for(lambda r: _answers(r, "cam-d"), timeout=1.0), a.received
    finally:
        a.close()
        b.close()


def test_fleet_request_is_retained_for_an_offline_device(secure_broker, pki, tmp_path):
    ident = _device(pki, "cam-e", tmp_path)
    settings = FleetSettings(data_dir=tmp_path, security="mtls", broker_url=f"mqtts://127.0.0.1:{secure_broker.port}")
    request_renewal(settings, "cam-e")  # the device is not connected
    dev = _session(secure_broker, ident, "cam-e")
    try:
        dev.subscribe("edgekit/v1/cam-e/cert")
        assert dev.wait_for(lambda r: _answers(r, "cam-e"), timeout=5)
        assert _got(dev, "cam-e")[0]["renew"] is True
    finally:
        dev.close()


def test_a_revoked_device_cannot_renew(secure_broker, pki, issuer, tmp_path):
    ident = _device(pki, "cam-f", tmp_path)
    dev = _session(secure_broker, ident, "cam-f")
    try:
        dev.subscribe("edgekit/v1/cam-f/cert")
        assert secure_broker.revoke("cam-f")  # ACL deny + CRL + SIGHUP while the session is live
        payload = _csr_payload("cam-f")[0]
        dev.publish("edgekit/v1/cam-f/csr", payload)
        assert not dev.wait_for(lambda r: _answers(r, "cam-f"), timeout=1.5)
        # even a CSR that reached the issuer (e.g. through a stale broker) is refused by the CA
        device, answer = issuer.handle("edgekit/v1/cam-f/csr", payload)
        assert device == "cam-f" and "revoked" in answer.error and not pki.active("cam-f")
    finally:
        dev.close()

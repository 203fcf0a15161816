"""The agent's certificate renewal (``devices/agent/certs.py``): when it asks, what it accepts, how it
installs, and how it recovers an install a crash interrupted. Certificates come from a real fleet CA;
the MQTT side is a recorded ``send`` (the broker path runs in ``tests/fleet/security``)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from devices.agent.certs import CertRenewer, finish_install
from edgekit.certs import read_cert
from edgekit.wire import CertAnswer, encode
from fleet.security.files import write_private, write_public
from fleet.security.pki import FleetPKI


@pytest.fixture
def pki(tmp_path) -> FleetPKI:
    return FleetPKI.init(tmp_path / "pki")


class Device:
    def __init__(self, pki: FleetPKI, folder, *, valid_for=dt.timedelta(days=365), age=dt.timedelta(seconds=1),
                 fraction=1 / 3):
        now = dt.datetime.now(dt.timezone.utc)
        issued = pki.issue_device("cam-1", valid_from=now - age, valid_for=valid_for,
                                  renew=bool(pki.active("cam-1")))
        self.cert, self.key, self.ca = folder / "device.crt", folder / "device.key", folder / "ca.crt"
        write_public(self.cert, issued.cert_pem)
        write_private(self.key, issued.key_pem)
        write_public(self.ca, pki.ca_cert_path.read_bytes())
        self.issued = issued
        self.sent: list[dict] = []
        self.events: list[tuple[str, str, dict, str]] = []
        self.installed = 0
        self.renewer = self.make(fraction)

    def make(self, fraction=1 / 3) -> CertRenewer:
        def event(kind, message, *, level="info", data=None):
            self.events.append((kind, level, data or {}, message))

        def send(payload: bytes) -> bool:
            self.sent.append(json.loads(payload))
            return True

        def installed():
            self.installed += 1

        return CertRenewer("cam-1", cert_file=self.cert, key_file=self.key, ca_file=self.ca, fraction=fraction,
                           check_interval_s=3600, send=send, event=event, on_installed=installed)

    def answer(self, **kw) -> bytes:
        return encode(CertAnswer(device_id="cam-1", **kw))


def test_not_due_means_no_request_and_due_means_one(pki, tmp_path):
    fresh = Device(pki, tmp_path / "a", valid_for=dt.timedelta(hours=1), age=dt.timedelta(minutes=39))
    assert fresh.renewer.check() is False and fresh.sent == [] and fresh.renewer.pending() is None
    # 41 of 60 minutes gone: less than a third left
    old = Device(pki, tmp_path / "b", valid_for=dt.timedelta(hours=1), age=dt.timedelta(minutes=41))
    assert old.renewer.check() is True
    (req,) = old.sent
    assert req["device_id"] == "cam-1" and req["reason"] == "expiring" and "PRIVATE" not in json.dumps(req)
    assert old.renewer.pending_path.stat().st_mode & 0o777 == 0o600
    assert [e[0] for e in old.events] == ["cert.renewal_requested"]
    # within the retry interval nothing is re-sent; after a reconnect (resend) the same request goes out
    old.renewer.check()
    assert len(old.sent) == 1
    old.renewer.check(resend=True)
    assert [r["request_id"] for r in old.sent] == [req["request_id"]] * 2


def test_pending_request_survives_a_restart_with_the_same_key(pki, tmp_path):
    dev = Device(pki, tmp_path / "d")
    dev.renewer.check(requested=True)
    again = dev.make()  # a new process: same files
    again.check(resend=True)
    assert dev.sent[0]["request_id"] == dev.sent[1]["request_id"] and dev.sent[1]["reason"] == "requested"


def test_fleet_request_starts_a_renewal_and_a_good_answer_is_installed(pki, tmp_path):
    dev = Device(pki, tmp_path / "d")
    old_key = dev.key.read_bytes()
    assert dev.renewer.handle_answer(dev.answer(renew=True)) == "requested"
    (req,) = dev.sent
    issued = pki.sign_device_csr("cam-1", req["csr_pem"].encode())
    assert dev.renewer.handle_answer(dev.answer(request_id=req["request_id"], cert_pem=issued.cert_pem.decode())) \
        == "installed"
    assert read_cert(dev.cert.read_bytes()).serial == issued.serial
    assert dev.key.read_bytes() != old_key and dev.key.stat().st_mode & 0o777 == 0o600
    assert dev.renewer.pending() is None and dev.installed == 1
    kind, level, data, _ = dev.events[-1]
    assert kind == "cert.renewed" and data["serial"] == issued.serial
    # the same retained answer seen again after a reconnect changes nothing
    assert dev.renewer.handle_answer(dev.answer(request_id=req["request_id"], cert_pem=issued.cert_pem.decode())) \
        == "ignored"
    assert dev.installed == 1


def _pending_request(dev: Device) -> dict:
    dev.renewer.check(requested=True)
    return dev.sent[-1]


def test_refused_and_bad_answers_keep_the_current_certificate(pki, tmp_path):
    dev = Device(pki, tmp_path / "d")
    before = (dev.cert.read_bytes(), dev.key.read_bytes())
    other_ca = FleetPKI.init(tmp_path / "other-ca")

    req = _pending_request(dev)
    assert dev.renewer.handle_answer(dev.answer(request_id=req["request_id"], error="device was revoked")) == "refused"
    assert dev.events[-1][:2] == ("cert.renewal_failed", "error") and dev.renewer.pending() is None

    cases = {
        "not issued by the fleet CA": lambda r: other_ca.sign_device_csr(
            "cam-1", r["csr_pem"].encode(), renew=False).cert_pem,
        "for another key": lambda r: pki.issue_device("cam-1", renew=True).cert_pem,
        "not a PEM certificate": lambda r: b"garbage",
    }
    for reason, make in cases.items():
        r = _pending_request(dev)
        got = dev.renewer.handle_answer(dev.answer(request_id=r["request_id"], cert_pem=make(r).decode()))
        assert got == "rejected", reason
        kind, level, data, message = dev.events[-1]
        assert kind == "cert.renewal_failed" and data["request_id"] == r["request_id"] and reason in message, message
    # an answer to some other request, and one for another device, are ignored
    r = _pending_request(dev)
    assert dev.renewer.handle_answer(dev.answer(request_id="ffffffffffffffff", error="x")) == "ignored"
    assert dev.renewer.handle_answer(encode(CertAnswer(device_id="cam-2", request_id=r["request_id"], error="x"))) \
        == "ignored"
    assert dev.renewer.handle_answer(b"{not json") == "ignored" and dev.renewer.handle_answer(b"") == "ignored"
    assert (dev.cert.read_bytes(), dev.key.read_bytes()) == before and dev.installed == 0


def test_finish_install_completes_or_drops_an_interrupted_install(pki, tmp_path):
    dev = Device(pki, tmp_path / "d")
    assert finish_install(dev.cert, dev.key) is None
    new = pki.issue_device("cam-1", renew=True)
    cert_new, key_new = dev.cert.with_name("device.crt.new"), dev.key.with_name("device.key.new")

    # crashed after writing both .new files: finished
    write_public(cert_new, new.cert_pem)
    write_private(key_new, new.key_pem)
    assert "key and certificate" in finish_install(dev.cert, dev.key)
    assert dev.cert.read_bytes() == new.cert_pem and dev.key.read_bytes() == new.key_pem

    # crashed between the two renames (key already in place): finished
    newer = pki.issue_device("cam-1", renew=True)
    write_private(dev.key, newer.key_pem)
    write_public(cert_new, newer.cert_pem)
    assert "(certificate)" in finish_install(dev.cert, dev.key)
    assert dev.cert.read_bytes() == newer.cert_pem

    # crashed while writing: a half .new is dropped, the matching pair stays
    write_public(cert_new, newer.cert_pem[:40])
    assert "dropped" in finish_install(dev.cert, dev.key)
    assert not cert_new.exists() and dev.cert.read_bytes() == newer.cert_pem

"""The fleet CA: what it issues, key file modes, renewal rules, CRL contents and bad input."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgekit.errors import ConfigError
from fleet.security.broker_config import render_acl
from fleet.security.pki import FLEET_IDENTITY, FleetPKI


def _mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_ca_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki", server_hostnames=["broker.lan", "10.0.0.5"])
    for key in (pki.ca_key_path, pki.server_key_path, pki.fleet_key_path):
        assert _mode(key) == 0o600, key
    assert _mode(pki.ca_cert_path) == 0o644
    ca = _cert(pki.ca_cert_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    with pytest.raises(ConfigError, match="already exists"):
        FleetPKI.init(tmp_path / "pki")
    # reopening loads the same CA
    assert FleetPKI.open(tmp_path / "pki").ca_cert.serial_number == ca.serial_number


def test_open_refuses_a_ca_key_others_can_read(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    pki.ca_key_path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        FleetPKI.open(tmp_path / "pki")


def test_open_without_a_ca_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="fleet ca init"):
        FleetPKI.open(tmp_path / "nothing")


def test_device_certificate_has_the_device_id_as_cn_and_chains_to_the_ca(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    issued = pki.issue_device("cam-17")
    cert = _cert(issued.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-17"
    cert.verify_directly_issued_by(pki.ca_cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # cannot pose as the broker
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert issued.ca_pem == pki.ca_cert_path.read_bytes()


def test_server_certificate_covers_loopback_and_configured_names(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki", server_hostnames=["broker.lan", "10.0.0.5"])
    san = _cert(pki.server_cert_path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert {"localhost", "broker.lan"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.5"}
    with pytest.raises(ConfigError, match="host name"):
        pki.issue_server(["bad host"])


def test_fleet_identity_cannot_be_claimed_by_a_device(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    cn = _cert(pki.fleet_cert_path.read_bytes()).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == FLEET_IDENTITY
    with pytest.raises(ConfigError, match="invalid device id"):
        pki.issue_device(FLEET_IDENTITY)


@pytest.mark.parametrize("bad", ["", "a/b", "cam+", "cam#", "-lead", "x" * 129, "spa ce"])
def test_invalid_device_ids_are_refused(tmp_path, bad):
    pki = FleetPKI.init(tmp_path / "pki")
    with pytest.raises(ConfigError, match="invalid device id"):
        pki.issue_device(bad)


def test_second_certificate_needs_renew_and_renewal_overlaps(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    with pytest.raises(ConfigError, match="nothing|no valid certificate to renew"):
        pki.issue_device("cam-1", renew=True)
    first = pki.issue_device("cam-1", valid_for=dt.timedelta(days=30))  # renewed well before it expires
    with pytest.raises(ConfigError, match="--renew"):
        pki.issue_device("cam-1")
    second = pki.issue_device("cam-1", renew=True)
    assert first.serial != second.serial and first.key_pem != second.key_pem
    assert second.not_after > first.not_after
    now = dt.datetime.now(dt.timezone.utc)
    active = pki.active("cam-1", now)
    assert {r.serial for r in active} == {first.serial, second.serial}  # both valid during the overlap
    # once the old one has expired only the new one counts
    assert {r.serial for r in pki.active("cam-1", first.not_after + dt.timedelta(seconds=1))} == {second.serial}


def test_revoke_puts_every_live_serial_on_the_crl_and_the_deny_list(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    a = pki.issue_device("cam-1")
    b = pki.issue_device("cam-1", renew=True)
    other = pki.issue_device("cam-2")
    assert set(pki.revoke("cam-1")) == {a.serial, b.serial}
    crl = pki.load_crl()
    assert crl.is_signature_valid(pki.ca_cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(a.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(b.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(other.serial, 16)) is None
    assert crl.next_update_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)
    assert pki.denied() == ["cam-1"]
    assert pki.active("cam-1") == []
    assert pki.revoke("cam-1") == []  # idempotent
    with pytest.raises(ConfigError, match="was revoked"):
        pki.issue_device("cam-1", renew=True)
    acl = render_acl(pki.denied())
    assert "user cam-1\ntopic deny #" in acl


def test_revoking_an_unknown_device_is_an_error_not_a_silent_success(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    with pytest.raises(ConfigError, match="no certificate was ever issued"):
        pki.revoke("typo-cam")
    with pytest.raises(ConfigError, match="not a device id"):
        pki.revoke(FLEET_IDENTITY)


def test_a_corrupt_index_is_a_clear_error(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    (pki.root / "index.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        pki.issue_device("cam-1")


def test_acl_confines_devices_to_their_own_topics():
    acl = render_acl()
    assert "pattern write edgekit/v1/%u/telemetry" in acl
    assert "pattern read edgekit/v1/%u/desired" in acl
    assert "pattern write edgekit/v1/%u/desired" not in acl and "readwrite edgekit/v1/%u" not in acl
    fleet_section = acl.split(f"user {FLEET_IDENTITY}\n", 1)[1]
    assert "topic read $share/+/edgekit/v1/+/telemetry" in fleet_section
    assert "topic readwrite edgekit/v1/+/desired" in fleet_section
    with pytest.raises(ConfigError):
        render_acl(["bad/id"])


def _csr(cn: str, key) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ).sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_csr_renewal_certifies_the_devices_own_key(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from fleet.security.pki import create_csr

    pki = FleetPKI.init(tmp_path / "pki")
    pki.issue_device("cam-1")
    key_pem, csr_pem = create_csr("cam-1")
    issued = pki.sign_device_csr("cam-1", csr_pem)
    assert issued.key_pem is None  # the private key never reached the CA
    cert = _cert(issued.cert_pem)
    device_key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == device_key.public_key()
    cert.verify_directly_issued_by(pki.ca_cert)
    assert len(pki.active("cam-1")) == 2


def test_bad_csrs_are_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from fleet.security.pki import create_csr

    pki = FleetPKI.init(tmp_path / "pki")
    pki.issue_device("cam-1")
    with pytest.raises(ConfigError, match="not a PEM certificate signing request"):
        pki.sign_device_csr("cam-1", b"garbage")
    with pytest.raises(ConfigError, match="must be exactly the device id"):
        pki.sign_device_csr("cam-1", create_csr("cam-2")[1])  # asks for someone else's identity
    with pytest.raises(ConfigError, match="P-256 or P-384"):
        pki.sign_device_csr("cam-1", _csr("cam-1", ec.generate_private_key(ec.SECP256K1())))
    with pytest.raises(ConfigError, match="too small"):
        pki.sign_device_csr("cam-1", _csr("cam-1", rsa.generate_private_key(65537, 1024)))
    with pytest.raises(ConfigError, match="not accepted"):
        pki.sign_device_csr("cam-1", _csr("cam-1", ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match="no valid certificate to renew"):
        pki.sign_device_csr("cam-9", create_csr("cam-9")[1])
    pki.revoke("cam-1")
    with pytest.raises(ConfigError, match="was revoked"):
        pki.sign_device_csr("cam-1", create_csr("cam-1")[1])


def test_csr_with_a_forged_signature_is_refused(tmp_path):
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    from fleet.security.pki import create_csr

    pki = FleetPKI.init(tmp_path / "pki")
    pki.issue_device("cam-1")
    csr = x509.load_pem_x509_csr(create_csr("cam-1")[1])
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # flip a bit inside the signature
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(ConfigError, match="does not verify"):
        pki.sign_device_csr("cam-1", pem)


def test_concurrent_provisioning_of_one_device_issues_one_certificate(tmp_path):
    """Two CLI invocations racing for the same new device: exactly one wins (file lock on the index)."""
    from concurrent.futures import ThreadPoolExecutor

    FleetPKI.init(tmp_path / "pki")

    def attempt(_):
        try:
            FleetPKI.open(tmp_path / "pki").issue_device("cam-race")
            return "ok"
        except ConfigError:
            return "refused"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    assert outcomes.count("ok") == 1, outcomes
    assert len(FleetPKI.open(tmp_path / "pki").records("cam-race")) == 1


def test_revocation_with_a_stale_pid_file_signals_nobody(tmp_path):
    """A pid file left by a crashed broker may name a reused pid: here our own test process."""
    import os

    from edgekit.errors import FleetError
    from fleet.security.broker_config import SecureBrokerFiles, apply_revocation, reload_broker

    pki = FleetPKI.init(tmp_path / "pki")
    pki.issue_device("cam-1")
    pki.revoke("cam-1")
    files = SecureBrokerFiles.in_dir(tmp_path / "broker")
    files.pid_file.parent.mkdir(parents=True)
    files.pid_file.write_text(f"{os.getpid()}\n")
    assert apply_revocation(pki, files) is False  # and pytest is still alive to assert it
    assert "user cam-1\ntopic deny #" in files.acl.read_text()
    with pytest.raises(FleetError, match="not a running mosquitto"):
        reload_broker(os.getpid())
    files.pid_file.write_text("garbage")
    with pytest.raises(FleetError, match="does not hold a pid"):
        apply_revocation(pki, files)


def test_reinstate_lifts_the_deny_but_not_the_crl(tmp_path):
    pki = FleetPKI.init(tmp_path / "pki")
    old = pki.issue_device("cam-1")
    pki.revoke("cam-1")
    with pytest.raises(ConfigError, match="not revoked"):
        pki.reinstate("cam-2")
    pki.reinstate("cam-1")
    assert pki.denied() == []
    new = pki.issue_device("cam-1")  # a fresh identity, no --renew needed: the old one is dead
    crl = pki.load_crl()
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(new.serial, 16)) is None

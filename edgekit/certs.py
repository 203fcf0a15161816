"""Device certificates, the parts both sides need: a device's CSR, and the device's check of what came back.

Pure ``cryptography`` (a core dependency), so the agent (no fleet code on a device) and the fleet CA
(:mod:`fleet.security.pki`) share it. The renewal protocol over MQTT (``csr`` / ``cert`` topics, see
:mod:`edgekit.wire`) uses :func:`create_csr` on the device, the fleet CA signs, and the device accepts
the answer only after :func:`check_issued`: signed by the fleet CA it already trusts, ``CN`` = its own
id, for the key it generated, and valid now.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgekit.errors import ConfigError

__all__ = ["CertFacts", "check_issued", "create_csr", "csr_fingerprint", "read_cert"]

#: a certificate whose notBefore is this far in the future is still accepted (clock skew between hosts)
CLOCK_SKEW = dt.timedelta(minutes=5)


def create_csr(device_id: str) -> tuple[bytes, bytes]:
    """A new P-256 key and a CSR for ``CN=device_id``; returns ``(key_pem, csr_pem)``.

    The key PEM is unencrypted PKCS#8: the caller writes it 0600 and never sends it anywhere.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_fingerprint(csr_pem: bytes) -> str:
    """A stable id of a renewal request: sha256 of the CSR's public key (16 hex); a re-sent CSR keeps it."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM certificate signing request: {exc}") from exc
    return hashlib.sha256(_spki(csr.public_key())).hexdigest()[:16]


class CertFacts:
    """What the agent needs to know about a certificate: its CN, serial and validity window."""

    def __init__(self, cert: x509.Certificate):
        self.cert = cert
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.cn = str(cns[0].value) if cns else ""
        self.serial = format(cert.serial_number, "x")
        self.not_before = cert.not_valid_before_utc
        self.not_after = cert.not_valid_after_utc

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        return self.not_after - (now or dt.datetime.now(dt.timezone.utc))

    def due_for_renewal(self, fraction: float, now: dt.datetime | None = None) -> bool:
        """True once less than ``fraction`` of the lifetime is left (1/3: renew after two thirds)."""
        return self.remaining(now) <= self.lifetime * fraction


def read_cert(pem: bytes) -> CertFacts:
    """Parse the first PEM certificate; a malformed one is a :class:`ConfigError`."""
    try:
        return CertFacts(x509.load_pem_x509_certificate(pem))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from exc


def check_issued(cert_pem: bytes, *, ca_pem: bytes, device_id: str, key_pem: bytes,
                 now: dt.datetime | None = None) -> CertFacts:
    """Accept a certificate the fleet issued for this device's pending key, or say exactly why not.

    Checks: it parses; the fleet CA (``ca_pem``, the CA the device already trusts) signed it; its CN is
    ``device_id``; it certifies the public half of ``key_pem``; it is valid now (``notBefore`` up to
    :data:`CLOCK_SKEW` ahead is tolerated).
    """
    facts = read_cert(cert_pem)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the trusted CA file is not a PEM certificate: {exc}") from exc
    try:
        facts.cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"certificate {facts.serial} was not issued by the fleet CA this device trusts: "
                          f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
    if facts.cn != device_id:
        raise ConfigError(f"certificate {facts.serial} names CN {facts.cn!r}, not this device ({device_id!r})")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the pending private key is unreadable: {exc}") from exc
    if _spki(key.public_key()) != _spki(facts.cert.public_key()):
        raise ConfigError(f"certificate {facts.serial} is for another key than the one this device generated")
    when = now or dt.datetime.now(dt.timezone.utc)
    if facts.not_after <= when:
        raise ConfigError(f"certificate {facts.serial} already expired ({facts.not_after:%Y-%m-%d %H:%M:%S} UTC)")
    if facts.not_before > when + CLOCK_SKEW:
        raise ConfigError(f"certificate {facts.serial} is not valid before {facts.not_before:%Y-%m-%d %H:%M:%S} UTC")
    return facts

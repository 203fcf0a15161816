"""The fleet's certificate authority: device, fleet-manager and broker certificates, renewal, revocation.

Everything lives in one folder (by default ``{fleet data_dir}/pki``)::

    ca.key  ca.crt          the fleet CA (P-256 ECDSA; the key is 0600 and never leaves this folder)
    crl.pem                 the CA-signed certificate revocation list, rewritten on every revocation
    server.key server.crt   the broker's TLS server certificate (127.0.0.1, localhost + configured names)
    fleet.key  fleet.crt    the fleet manager's own MQTT client identity (CN ``@edgekit-fleet``)
    index.json              every certificate issued: serial, CN, kind, validity, revocation time
    issued/SERIAL.pem       a copy of every issued certificate (public)

A device's identity is the CN of its certificate (= its device id), which mosquitto takes as the MQTT
user name (``use_identity_as_username``) for the per-device ACL. The fleet identity starts with ``@``,
a character device ids cannot contain, so no device can ever be provisioned under the fleet's name.

Renewal issues a fresh key and certificate while the previous certificate stays valid until it expires
(overlapping validity: a device keeps working whether or not the renewal has reached it yet).
Revocation marks every unexpired certificate of a device in the index, regenerates the CRL and adds the
device to the deny-list that :mod:`fleet.security.broker_config` turns into ACL ``deny`` rules.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.certs import create_csr  # re-exported: the device side of CSR renewal lives in the core
from edgekit.errors import ConfigError
from edgekit.wire import valid_device_id
from fleet.security.files import write_private, write_public

__all__ = [
    "FLEET_IDENTITY",
    "CertRecord",
    "DenyList",
    "FleetPKI",
    "IssuedIdentity",
    "create_csr",
    "load_certificate",
]

#: the CN (= MQTT user name) of the fleet manager; ``@`` cannot appear in a device id
FLEET_IDENTITY = "@edgekit-fleet"
SERVER_CN = "edgekit-broker"

CertKind = Literal["device", "fleet", "server"]

_CLOCK_SKEW = dt.timedelta(minutes=5)
# The broker loads the CRL once and OpenSSL refuses *every* client once a CRL is past its nextUpdate,
# so the CRL is valid as long as the CA; freshness comes from regenerating it on every revocation.
_CRL_VALIDITY = dt.timedelta(days=3650)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertRecord(BaseModel):
    """One issued certificate as kept in ``index.json``."""

    model_config = ConfigDict(extra="forbid")

    serial: str  # hex
    cn: str
    kind: CertKind
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None

    def valid_at(self, when: dt.datetime) -> bool:
        return self.revoked_at is None and self.not_before <= when < self.not_after


class _Index(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    certificates: list[CertRecord] = []
    denied: list[str] = []


@dataclass(frozen=True)
class IssuedIdentity:
    """A freshly issued key and certificate (PEM), with the CA certificate that signed it."""

    cn: str
    key_pem: bytes | None  # None when the key stayed on the device (issued from its CSR)
    cert_pem: bytes
    ca_pem: bytes
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime


def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate; a missing or malformed file is a :class:`ConfigError`."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"certificate {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from exc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class DenyList:
    """The revoked device ids of the CA in ``root`` for hot paths (download route): reads ``index.json``
    only when it changed, and needs no CA key. No CA (an insecure trial fleet) means nobody is denied."""

    def __init__(self, root: Path):
        self.path = Path(root) / "index.json"
        self._sig: tuple[int, int] | None = None
        self._denied: frozenset[str] = frozenset()

    def __contains__(self, device_id: object) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        sig = (st.st_mtime_ns, st.st_size)
        if sig != self._sig:
            try:
                index = _Index.model_validate_json(self.path.read_text())
            except (OSError, ValidationError) as exc:  # fail closed: a broken index denies everyone
                raise ConfigError(f"cannot read the deny-list in {self.path}: {exc}") from exc
            self._denied, self._sig = frozenset(index.denied), sig
        return device_id in self._denied


class FleetPKI:
    """The fleet CA in folder ``root``. Create it with :meth:`init`, open an existing one with :meth:`open`."""

    def __init__(self, root: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate):
        self.root = Path(root)
        self._ca_key = ca_key
        self.ca_cert = ca_cert

    # ---- paths -------------------------------------------------------------------------------------
    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.root / "crl.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.root / "server.key"

    @property
    def fleet_cert_path(self) -> Path:
        return self.root / "fleet.crt"

    @property
    def fleet_key_path(self) -> Path:
        return self.root / "fleet.key"

    @property
    def _index_path(self) -> Path:
        return self.root / "index.json"

    # ---- creation ------------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        root: Path,
        *,
        name: str = "edgekit fleet CA",
        valid_for: dt.timedelta = dt.timedelta(days=3650),
        server_hostnames: list[str] | tuple[str, ...] = (),
        overwrite: bool = False,
    ) -> FleetPKI:
        """Create the CA (key 0600 + self-signed cert), an empty CRL, the broker and fleet identities."""
        root = Path(root)
        if (root / "ca.key").exists() and not overwrite:
            raise ConfigError(f"a fleet CA already exists in {root}; refusing to overwrite it")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekit"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(root / "ca.key", _key_pem(key))
        write_public(root / "ca.crt", _cert_pem(cert))
        pki = cls(root, key, cert)
        with pki._locked():
            pki._save_index(_Index())
            pki._write_crl(_Index())
        pki.issue_server(list(server_hostnames))
        pki.issue_fleet_identity()
        return pki

    @classmethod
    def open(cls, root: Path) -> FleetPKI:
        """Load the CA in ``root``; a missing CA tells the user to run ``edgekit fleet ca init``."""
        root = Path(root)
        key_path, cert_path = root / "ca.key", root / "ca.crt"
        if not key_path.exists() or not cert_path.exists():
            raise ConfigError(f"no fleet CA in {root}; create one with `edgekit fleet ca init`")
        if key_path.stat().st_mode & 0o077:
            raise ConfigError(f"the CA key {key_path} is readable by others; chmod 600 it (and consider it leaked)")
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{key_path} is not a readable PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC private key")
        cert = load_certificate(cert_path)
        if cert.public_key() != key.public_key():
            raise ConfigError(f"{cert_path} does not belong to the key {key_path}")
        return cls(root, key, cert)

    # ---- index ---------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise index/CRL updates between concurrent CLI invocations."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_index(self) -> _Index:
        try:
            raw = self._index_path.read_text()
        except FileNotFoundError:
            return _Index()
        except OSError as exc:
            raise ConfigError(f"cannot read {self._index_path}: {exc}") from exc
        try:
            return _Index.model_validate_json(raw)
        except ValidationError as exc:
            raise ConfigError(f"{self._index_path} is corrupt: {exc.errors()[0]['msg']}") from exc

    def _save_index(self, index: _Index) -> None:
        write_public(self._index_path, index.model_dump_json(indent=1).encode())

    def records(self, cn: str | None = None) -> list[CertRecord]:
        """Every issued certificate (of one CN when given), oldest first."""
        return [r for r in self._load_index().certificates if cn is None or r.cn == cn]

    def active(self, cn: str, when: dt.datetime | None = None) -> list[CertRecord]:
        """The certificates of ``cn`` that are valid now (not revoked, within their validity)."""
        when = when or _now()
        return [r for r in self.records(cn) if r.valid_at(when)]

    def denied(self) -> list[str]:
        """Device ids whose certificates were revoked (the ACL deny-list), sorted."""
        return sorted(self._load_index().denied)

    # ---- issuing -------------------------------------------------------------------------------------
    def _issue(
        self,
        cn: str,
        kind: CertKind,
        *,
        valid_for: dt.timedelta,
        valid_from: dt.datetime | None = None,
        hostnames: list[str] | tuple[str, ...] = (),
        public_key: CertificatePublicKeyTypes | None = None,
        check: Callable[[], None] | None = None,
    ) -> IssuedIdentity:
        if valid_for <= dt.timedelta(0):
            raise ConfigError(f"certificate validity must be positive, not {valid_for}")
        key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
        subject_key = public_key if public_key is not None else key.public_key()
        start = valid_from if valid_from is not None else _now() - _CLOCK_SKEW
        end = start + valid_for
        ca_end = self.ca_cert.not_valid_after_utc
        if end > ca_end:
            end = ca_end  # a leaf cannot outlive its CA
        serial = x509.random_serial_number()
        eku = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekit"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]))
            .issuer_name(self.ca_cert.subject)
            .public_key(subject_key)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False
            )
        )
        if kind == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(hostnames)), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        record = CertRecord(
            serial=format(serial, "x"), cn=cn, kind=kind,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        )
        with self._locked():
            if check is not None:
                check()  # again under the lock: two concurrent provisions of one id cannot both pass
            index = self._load_index()
            index.certificates.append(record)
            write_public(self.root / "issued" / f"{record.serial}.pem", _cert_pem(cert))
            self._save_index(index)
        return IssuedIdentity(
            cn=cn, key_pem=_key_pem(key) if key is not None else None, cert_pem=_cert_pem(cert),
            ca_pem=_cert_pem(self.ca_cert),
            serial=record.serial, not_before=record.not_before, not_after=record.not_after,
        )

    def issue_device(
        self,
        device_id: str,
        *,
        renew: bool = False,
        valid_for: dt.timedelta = dt.timedelta(days=365),
        valid_from: dt.datetime | None = None,
    ) -> IssuedIdentity:
        """Issue a key + client certificate with CN = ``device_id``.

        Without ``renew`` a device that still holds a valid certificate is refused (it would silently
        get a second identity); with ``renew`` the new certificate overlaps the old one, which stays
        valid until it expires. A revoked device id is refused either way.
        """
        self._check_may_issue(device_id, renew)
        return self._issue(
            device_id, "device", valid_for=valid_for, valid_from=valid_from,
            check=lambda: self._check_may_issue(device_id, renew),
        )

    def sign_device_csr(
        self,
        device_id: str,
        csr_pem: bytes,
        *,
        renew: bool = True,
        valid_for: dt.timedelta = dt.timedelta(days=365),
    ) -> IssuedIdentity:
        """Issue a certificate for a key that never leaves the device, from its PEM CSR.

        The CSR must be self-signed (proof that the requester holds the key), name exactly
        ``CN=device_id`` and carry an EC P-256/P-384 or RSA >= 2048 key. Same renewal and revocation
        rules as :meth:`issue_device`; ``renew`` defaults to True because this is the renewal path.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"not a PEM certificate signing request: {exc}") from exc
        try:
            signed_by_holder = csr.is_signature_valid
        except (ValueError, TypeError, UnsupportedAlgorithm):
            signed_by_holder = False
        if not signed_by_holder:
            raise ConfigError("the CSR's signature does not verify (the requester does not hold the key)")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or cns[0].value != device_id:
            got = ", ".join(str(c.value) for c in cns) or "none"
            raise ConfigError(f"the CSR names CN {got!r}; it must be exactly the device id {device_id!r}")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise ConfigError(f"EC curve {key.curve.name} is not accepted (use P-256 or P-384)")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise ConfigError(f"RSA key of {key.key_size} bits is too small (>= 2048)")
        else:
            raise ConfigError(f"{type(key).__name__} keys are not accepted for device certificates")
        self._check_may_issue(device_id, renew)
        return self._issue(
            device_id, "device", valid_for=valid_for, public_key=key,
            check=lambda: self._check_may_issue(device_id, renew),
        )

    def _check_may_issue(self, device_id: str, renew: bool) -> None:
        if not valid_device_id(device_id):
            raise ConfigError(
                f"invalid device id {device_id!r} (letters, digits, '.', '_', '-'; 1-128 chars, no '/', '+', '#')"
            )
        if device_id in self._load_index().denied:
            raise ConfigError(f"device {device_id!r} was revoked; a revoked identity is not re-issued")
        current = self.active(device_id)
        if current and not renew:
            latest = max(current, key=lambda r: r.not_after)
            raise ConfigError(
                f"device {device_id!r} already holds a valid certificate (serial {latest.serial}, "
                f"expires {latest.not_after:%Y-%m-%d}); use --renew to issue an overlapping one"
            )
        if renew and not current:
            raise ConfigError(f"device {device_id!r} has no valid certificate to renew; provision it without --renew")

    def issue_fleet_identity(self, *, valid_for: dt.timedelta = dt.timedelta(days=365)) -> IssuedIdentity:
        """(Re-)issue the fleet manager's client identity into ``fleet.key``/``fleet.crt``."""
        issued = self._issue(FLEET_IDENTITY, "fleet", valid_for=valid_for)
        write_private(self.fleet_key_path, issued.key_pem)
        write_public(self.fleet_cert_path, issued.cert_pem)
        return issued

    def issue_server(
        self, hostnames: list[str] | tuple[str, ...] = (), *, valid_for: dt.timedelta = dt.timedelta(days=397)
    ) -> IssuedIdentity:
        """(Re-)issue the broker's server certificate for 127.0.0.1, ::1, localhost and ``hostnames``.

        mosquitto 2.x re-reads ``certfile``/``keyfile`` on SIGHUP, so a renewed server certificate is
        picked up by :func:`fleet.security.broker_config.reload_broker` without dropping clients.
        """
        issued = self._issue(SERVER_CN, "server", valid_for=valid_for, hostnames=hostnames)
        write_private(self.server_key_path, issued.key_pem)
        write_public(self.server_cert_path, issued.cert_pem)
        return issued

    # ---- revocation ----------------------------------------------------------------------------------
    def revoke(self, device_id: str) -> list[str]:
        """Revoke every unexpired certificate of ``device_id``; regenerate the CRL; deny-list the id.

        Returns the revoked serials. Revoking an unknown device is an error (a typo must not look like
        success); revoking an already revoked one is a no-op that returns ``[]``.
        """
        if device_id == FLEET_IDENTITY or not valid_device_id(device_id):
            raise ConfigError(f"{device_id!r} is not a device id")
        with self._locked():
            index = self._load_index()
            mine = [r for r in index.certificates if r.cn == device_id and r.kind == "device"]
            if not mine:
                raise ConfigError(f"no certificate was ever issued to device {device_id!r}")
            now = _now()
            revoked = []
            for rec in mine:
                if rec.revoked_at is None and rec.not_after > now:
                    rec.revoked_at = now
                    revoked.append(rec.serial)
            if device_id not in index.denied:
                index.denied.append(device_id)
            self._save_index(index)
            self._write_crl(index)
        return revoked

    def reinstate(self, device_id: str) -> None:
        """Take a revoked device id off the deny-list so it can be provisioned again, with a new key.

        Its old certificates stay on the CRL for good: only a freshly issued one will be accepted.
        """
        with self._locked():
            index = self._load_index()
            if device_id not in index.denied:
                raise ConfigError(f"device {device_id!r} is not revoked")
            index.denied.remove(device_id)
            self._save_index(index)

    def refresh_crl(self) -> Path:
        """Rewrite ``crl.pem`` from the index (e.g. after restoring a backup)."""
        with self._locked():
            self._write_crl(self._load_index())
        return self.crl_path

    def _write_crl(self, index: _Index) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca_cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + _CRL_VALIDITY)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False
            )
        )
        for rec in index.certificates:
            if rec.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(rec.serial, 16))
                    .revocation_date(rec.revoked_at)
                    .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                    .build()
                )
        crl = builder.sign(self._ca_key, hashes.SHA256())
        write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))

    def load_crl(self) -> x509.CertificateRevocationList:
        """The current CRL, parsed."""
        try:
            return x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CRL {self.crl_path}: {exc}") from exc


def _san(hostnames: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ]
    for h in hostnames:
        h = h.strip()
        if not h:
            continue
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            if not all(part and len(part) < 64 for part in h.split(".")) or len(h) > 253 or " " in h:
                raise ConfigError(f"{h!r} is not a valid host name for the broker certificate") from None
            gn: x509.GeneralName = x509.DNSName(h)
        else:
            gn = x509.IPAddress(ip)
        if gn not in names:
            names.append(gn)
    return names

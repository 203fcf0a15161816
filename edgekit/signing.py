"""ed25519 signing keys: generate, save, load, sign, verify.

Keys are stored as PEM (PKCS#8 private, SubjectPublicKeyInfo public). A key's id is the first 16 hex
digits of the sha256 of its raw public bytes; bundles name the id of the key that signed them so a
verifier holding several trusted keys (rotation) picks the right one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgekit.errors import ConfigError

__all__ = [
    "PublicKey",
    "SigningKey",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "load_public_keys",
    "load_signing_key",
]


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A trusted ed25519 public key."""

    key: Ed25519PublicKey

    @property
    def id(self) -> str:
        return key_id(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """An ed25519 private key used to sign bundle manifests."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    @property
    def id(self) -> str:
        return self.public.id

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def generate_keypair(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``signing.key`` (mode 0600) and ``signing.pub`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / "signing.key", out_dir / "signing.pub"
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise ConfigError(f"{priv_path} or {pub_path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(SigningKey(key).public.pem())
    return priv_path, pub_path


def load_signing_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"signing key {path} does not exist") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key")
    return SigningKey(key)


def load_public_key(path: Path) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"public key {path} does not exist") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an ed25519 public key")
    return PublicKey(key)


def load_public_keys(paths: list[Path]) -> list[PublicKey]:
    """Load several trusted keys; a directory contributes every ``*.pub`` in it."""
    keys: list[PublicKey] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            keys.extend(load_public_key(f) for f in sorted(p.glob("*.pub")))
        else:
            keys.append(load_public_key(p))
    return keys

"""Provision a device: its key and certificate, the CA, the trusted signing keys and a ready agent config.

``provision`` writes into ``out_dir`` (copied onto the device, e.g. to ``/etc/edgekit-agent``)::

    device.key              the device's private key (0600; generated here, shown to nobody else)
    device.crt              its client certificate, CN = device id
    ca.crt                  the fleet CA (verifies the broker, and the fleet API when it serves https)
    trusted-keys/<id>.pub   the bundle-signing public keys the agent accepts
    agent.yaml              an agent config (:class:`devices.agent.config.AgentConfig` field names)

By default the YAML names the files relative to itself (``ca.crt``, ``device.crt`` …): the agent resolves
relative paths against its config file's folder, so the folder works wherever it is copied. With
``install_dir`` the paths are absolute, under that folder (where it will live on the device).

With a CSR from the device, its key is made on the device and never travels; only the certificate
does (``--csr``). ``renew=True`` issues a new key + certificate while the old certificate stays valid until it expires,
and rewrites ``device.key``/``device.crt`` atomically (a reader sees the old or the new file, never
half) — deliver the folder over the device's own channel; the agent uses the new pair on its next
(re)connect and the old one keeps working until then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from edgekit.errors import ConfigError
from edgekit.profiles import load_profile
from edgekit.signing import PublicKey, load_public_keys
from fleet.security.files import write_private, write_public
from fleet.security.pki import FleetPKI, IssuedIdentity

__all__ = ["ProvisionResult", "agent_config", "provision"]

_TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:=-")


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision` wrote."""

    device_id: str
    out_dir: Path
    key: Path  # not written when the certificate was issued from the device's CSR
    cert: Path
    ca: Path
    trusted_keys: Path
    config: Path
    identity: IssuedIdentity


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{what} {url!r}: bad port ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{what} {url!r} must be a {' or '.join(s + '://' for s in schemes)} URL with a host")
    return url.rstrip("/")


def _check_tags(tags: Sequence[str]) -> list[str]:
    out = []
    for t in tags:
        t = t.strip()
        if not t:
            continue
        if len(t) > 64 or not set(t) <= _TAG_CHARS:
            raise ConfigError(f"invalid tag {t!r} (letters, digits, '_.:=-', at most 64 chars)")
        if t not in out:
            out.append(t)
    return out


def agent_config(
    *,
    device_id: str,
    broker_url: str,
    fleet_url: str | None,
    install_dir: Path | None = None,
    profile: str | None = None,
    tags: Sequence[str] = (),
) -> dict:
    """The agent config mapping that :func:`provision` writes as ``agent.yaml``.

    ``install_dir`` ``None``: file paths relative to the config file; else under ``install_dir``.
    """
    d = Path(install_dir) if install_dir is not None else Path()
    cfg: dict = {}
    if profile:
        cfg["profile"] = profile
    cfg["mqtt"] = {
        "url": broker_url,
        "device_id": device_id,
        "ca_file": str(d / "ca.crt"),
        "client_cert": str(d / "device.crt"),
        "client_key": str(d / "device.key"),
        "tags": list(tags),
    }
    ota: dict = {"trusted_keys": [str(d / "trusted-keys")]}
    if fleet_url:
        # bundles come from the fleet only; over https the device proves itself with the same certificate
        ota["allowed_url_prefixes"] = [fleet_url + "/"]
        # the fleet's download route then checks that a download token in a URL is this device's own
        ota["headers"] = {"X-Edgekit-Device": device_id}
        if fleet_url.startswith("https://"):
            ota.update(ca_file=str(d / "ca.crt"), client_cert=str(d / "device.crt"), client_key=str(d / "device.key"))
    cfg["ota"] = ota
    return cfg


def provision(
    pki: FleetPKI,
    device_id: str,
    *,
    out_dir: Path,
    broker_url: str,
    trusted_keys: Sequence[Path],
    fleet_url: str | None = None,
    profile: str | None = None,
    tags: Sequence[str] = (),
    renew: bool = False,
    install_dir: Path | None = None,
    csr_pem: bytes | None = None,
) -> ProvisionResult:
    """Issue ``device_id``'s identity and write the device folder (see the module docstring).

    Refuses (ConfigError) an mqtt:// broker URL (devices only talk mTLS), an unknown profile, no trusted
    bundle key, and an ``out_dir`` that already holds a device key unless ``renew`` is set.
    With ``csr_pem`` (the device made its own key and a CSR) no key is written: the certificate is
    issued for the CSR's key, which never leaves the device.
    """
    broker_url = _check_url(broker_url, ("mqtts",), "broker URL")
    if fleet_url is not None:
        fleet_url = _check_url(fleet_url, ("http", "https"), "fleet URL")
    if profile:
        load_profile(profile)  # ProfileError names the known profiles
    clean_tags = _check_tags(tags)
    keys: list[PublicKey] = load_public_keys([Path(p) for p in trusted_keys])
    if not keys:
        raise ConfigError("no trusted bundle-signing public key given: the device could not verify any bundle")
    out_dir = Path(out_dir)
    key_path, cert_path = out_dir / "device.key", out_dir / "device.crt"
    if key_path.exists() and not renew and csr_pem is None:
        raise ConfigError(f"{key_path} already exists; use --renew to replace the device's key and certificate")
    if renew and (out_dir / "agent.yaml").exists():
        try:
            existing = yaml.safe_load((out_dir / "agent.yaml").read_text()) or {}
            existing_id = existing.get("mqtt", {}).get("device_id")
        except (OSError, yaml.YAMLError, AttributeError):
            existing_id = None
        if existing_id not in (None, device_id):
            raise ConfigError(f"{out_dir} belongs to device {existing_id!r}, not {device_id!r}")

    if csr_pem is not None:
        issued = pki.sign_device_csr(device_id, csr_pem, renew=renew)
    else:
        issued = pki.issue_device(device_id, renew=renew)
    if issued.key_pem is not None:
        write_private(key_path, issued.key_pem)
    write_public(cert_path, issued.cert_pem)
    ca_path = write_public(out_dir / "ca.crt", issued.ca_pem)
    keys_dir = out_dir / "trusted-keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{k.id}.pub": k for k in keys}
    for stale in keys_dir.glob("*.pub"):
        if stale.name not in wanted:  # a retired key disappears from the device on the next provision
            stale.unlink()
    for name, k in wanted.items():
        write_public(keys_dir / name, k.pem())
    cfg = agent_config(
        device_id=device_id, broker_url=broker_url, fleet_url=fleet_url,
        install_dir=Path(install_dir) if install_dir is not None else None,
        profile=profile, tags=clean_tags,
    )
    header = f"# edgekit agent config for device {device_id}, written by `edgekit fleet provision`\n"
    config_path = write_public(out_dir / "agent.yaml", (header + yaml.safe_dump(cfg, sort_keys=False)).encode())
    return ProvisionResult(
        device_id=device_id, out_dir=out_dir, key=key_path, cert=cert_path, ca=ca_path,
        trusted_keys=keys_dir, config=config_path, identity=issued,
    )

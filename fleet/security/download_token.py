"""Short-lived bundle download tokens: HMAC-SHA256 over (device id, bundle name@version, expiry).

The fleet issues a token for one device and one bundle when it writes that device's desired state;
the token travels inside the desired state, which the broker ACL lets only that device read. The
bundle download route verifies it before serving a byte::

    claims = verify_download_token(token, secret, bundle="resnet", version="1.2.0",
                                   device_id=cn_from_mtls_or_None)

so a device cannot fetch a bundle it was not assigned (another group's restricted model), cannot reuse
another device's token (when the requester is authenticated, e.g. by its mTLS certificate, its id must
match), and cannot use a token after it expires. Wire format (URL-safe, no padding)::

    ekdt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "ekdt1." + claims part))>

The secret is 32 random bytes in a 0600 file the fleet manager alone reads (:func:`load_or_create_secret`);
replicas of the fleet share the file. No claim is trusted before the MAC has been checked in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ConfigError, FleetError
from edgekit.wire import Desired, valid_device_id
from fleet.security.files import write_private

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "TOKEN_PARAM",
    "DownloadClaims",
    "DownloadTokenError",
    "issue_download_token",
    "load_or_create_secret",
    "tokenized_desired",
    "tokenized_url",
    "verify_download_token",
]

#: the query parameter of the bundle download route that carries a download token
TOKEN_PARAM = "token"

_PREFIX = "ekdt1"
#: long enough for a device that was offline for a while to pick up its desired state and download
DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 24 * 3600
_MAX_TOKEN_CHARS = 2048
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


class DownloadTokenError(FleetError):
    """A download token is malformed, forged, expired, or for another device or bundle (HTTP 403)."""


class DownloadClaims(BaseModel):
    """What a valid token grants: device ``dev`` may download ``bundle@version`` until ``exp``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(default=1, ge=1, le=1)
    dev: str
    bundle: str
    version: str
    exp: int  # unix seconds
    iat: int
    #: optional sha256 of the bundle file: the token is then valid for these exact bytes only
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or len(secret) < 32:
        raise ConfigError("the download-token secret must be at least 32 bytes")


def _mac(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode(), hashlib.sha256).digest()


def load_or_create_secret(path: Path) -> bytes:
    """Read the fleet's token secret from ``path``, creating 32 random bytes (mode 0600) the first time."""
    path = Path(path)
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        write_private(path, secret)
        return secret
    except OSError as exc:
        raise ConfigError(f"cannot read the download-token secret {path}: {exc}") from exc
    if len(secret) < 32:
        raise ConfigError(f"download-token secret {path} is shorter than 32 bytes")
    if os.stat(path).st_mode & 0o077:
        raise ConfigError(f"download-token secret {path} is readable by others; chmod 600 it")
    return secret


def issue_download_token(
    secret: bytes,
    *,
    device_id: str,
    bundle: str,
    version: str,
    ttl_s: int = DEFAULT_TTL_S,
    sha256: str | None = None,
    now: float | None = None,
) -> str:
    """A token letting ``device_id`` download ``bundle@version`` for ``ttl_s`` seconds."""
    _check_secret(secret)
    if not valid_device_id(device_id):
        raise ConfigError(f"invalid device id {device_id!r}")
    if not _NAME.match(bundle) or not _NAME.match(version):
        raise ConfigError(f"invalid bundle reference {bundle!r}@{version!r}")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ConfigError(f"token lifetime must be 1..{MAX_TTL_S} s, not {ttl_s}")
    issued = int(now if now is not None else time.time())
    try:
        claims = DownloadClaims(
            dev=device_id, bundle=bundle, version=version, exp=issued + ttl_s, iat=issued,
            sha256=sha256, nonce=secrets.token_hex(8),
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid download token claims: {exc.errors()[0]['msg']}") from exc
    body = _b64(claims.model_dump_json(exclude_none=True).encode())
    signed = f"{_PREFIX}.{body}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def verify_download_token(
    token: str,
    secret: bytes,
    *,
    bundle: str,
    version: str,
    device_id: str | None = None,
    sha256: str | None = None,
    now: float | None = None,
) -> DownloadClaims:
    """Check ``token`` for a download of ``bundle@version``; return its claims or raise DownloadTokenError.

    ``device_id``: the requester's authenticated identity when the route knows it (mTLS CN); the token
    must then name that device. ``sha256``: the file about to be served; checked when the token binds one.
    """
    _check_secret(secret)
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        raise DownloadTokenError("missing or oversized download token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _PREFIX:
        raise DownloadTokenError("malformed download token")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        mac = _unb64(parts[2])
    except (ValueError, TypeError) as exc:
        raise DownloadTokenError("malformed download token signature") from exc
    if not hmac.compare_digest(mac, _mac(secret, signed)):
        raise DownloadTokenError("download token signature does not verify (forged or from another fleet)")
    try:
        claims = DownloadClaims.model_validate_json(_unb64(parts[1]))
    except (ValueError, ValidationError) as exc:  # only reachable with the fleet's own secret
        raise DownloadTokenError("download token claims are invalid") from exc
    when = int(now if now is not None else time.time())
    if when >= claims.exp:
        raise DownloadTokenError(f"download token expired {when - claims.exp} s ago")
    if claims.bundle != bundle or claims.version != version:
        raise DownloadTokenError(
            f"download token is for {claims.bundle}@{claims.version}, not {bundle}@{version}"
        )
    if device_id is not None and claims.dev != device_id:
        raise DownloadTokenError(f"download token was issued to another device, not {device_id!r}")
    if claims.sha256 is not None and sha256 is not None and claims.sha256 != sha256:
        raise DownloadTokenError("download token is for different bundle bytes (sha256 mismatch)")
    return claims


def tokenized_url(
    download_url: str,
    secret: bytes,
    *,
    device_id: str,
    bundle: str,
    version: str,
    sha256: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """``download_url`` (the registry's ``…/bundles/{name}/{version}/download``) with a fresh
    ``?token=`` for ``device_id`` appended (any earlier token replaced). With it the device needs no
    API token: the download route verifies the token instead."""
    token = issue_download_token(secret, device_id=device_id, bundle=bundle, version=version, ttl_s=ttl_s,
                                 sha256=sha256, now=now)
    parts = urlsplit(download_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"download URL {download_url!r} is not an http(s):// URL")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != TOKEN_PARAM]
    query.append((TOKEN_PARAM, token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def tokenized_desired(desired: Desired, secret: bytes, *, ttl_s: int = DEFAULT_TTL_S,
                      now: float | None = None) -> Desired:
    """A copy of ``desired`` whose bundle URL carries a fresh download token for its device (bound to the
    bundle's name, version and sha256); unchanged when it names no bundle.

    Call it when the desired state is *published* (each publish, including re-publishes on a device's
    birth), not when it is stored, so a device that was offline longer than ``ttl_s`` still gets a live
    token."""
    if desired.bundle is None:
        return desired
    ref = desired.bundle
    url = tokenized_url(ref.url, secret, device_id=desired.device_id, bundle=ref.name, version=ref.version,
                        sha256=ref.sha256, ttl_s=ttl_s, now=now)
    return desired.model_copy(update={"bundle": ref.model_copy(update={"url": url})})

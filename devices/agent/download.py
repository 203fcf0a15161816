"""Streaming bundle download over HTTP(S) with a size limit and a sha256 check.

The body is streamed to ``dest`` chunk by chunk (never held in memory), refused as soon as it passes
the limit, and accepted only when its size and sha256 equal what the desired state announced. Optional
headers (auth tokens) and a TLS client certificate are supported for zero-trust deployments.

A URL may carry a fleet download token (``?token=…``): it is sent as is but never written into an error
message (those end up in the device's events); a refusal's reason from the server (``detail``) is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgekit.errors import AgentError

__all__ = ["DownloadError", "Downloader", "redact_url"]

_SECRET_PARAM = re.compile(r"([?&](?:token|access_token|sig|signature)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the values of token-like query parameters replaced by ``…`` (safe to log)."""
    return _SECRET_PARAM.sub(r"\1…", url)


def _reason(resp: httpx.Response) -> str:
    """The server's short explanation of a refusal (a JSON ``detail``), or ''."""
    try:
        body = b""
        for chunk in resp.iter_bytes(1024):
            body += chunk
            if len(body) >= 2048:
                break
        detail = json.loads(body[:2048]).get("detail")
    except (httpx.HTTPError, ValueError, AttributeError):
        return ""
    return f": {detail[:300]}" if isinstance(detail, str) and detail else ""


class DownloadError(AgentError):
    """A bundle could not be fetched, or what arrived is not what was announced.

    ``transient``: worth retrying later (network, server status, disk); otherwise the announced
    artifact itself is wrong (size or hash mismatch, over the limit) and retrying cannot help.
    """

    def __init__(self, message: str, *, transient: bool = False, http_status: int | None = None):
        super().__init__(message)
        self.transient = transient
        #: the server's HTTP status when it answered with an error (reported in the event's data)
        self.http_status = http_status


@dataclass
class Downloader:
    """``fetch(url, dest, sha256=..., size=...)``; everything else is configuration."""

    max_bytes: int = 512 << 20
    timeout_s: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    chunk: int = 1 << 20

    def _client(self) -> httpx.Client:
        verify: str | bool = str(self.ca_file) if self.ca_file else True
        cert = None
        if self.client_cert:
            cert = (str(self.client_cert), str(self.client_key)) if self.client_key else str(self.client_cert)
        try:
            return httpx.Client(headers=self.headers, verify=verify, cert=cert, timeout=self.timeout_s,
                                follow_redirects=True, max_redirects=5)
        except (OSError, ValueError) as exc:
            raise DownloadError(f"bad TLS settings for downloads: {exc}") from exc

    def fetch(self, url: str, dest: Path, *, sha256: str, size: int) -> Path:
        if size > self.max_bytes:
            raise DownloadError(f"bundle of {size} bytes is over the {self.max_bytes}-byte download limit")
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        got = 0
        try:
            with self._client() as client, client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise DownloadError(f"GET {redact_url(url)} answered HTTP {resp.status_code}{_reason(resp)}",
                                        transient=True, http_status=resp.status_code)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise DownloadError(f"server announces {declared} bytes, over the {self.max_bytes}-byte limit")
                with open(part, "wb") as fh:
                    for chunk in resp.iter_bytes(self.chunk):
                        got += len(chunk)
                        if got > self.max_bytes or got > size:
                            raise DownloadError(
                                f"download passed {min(self.max_bytes, size)} bytes (announced {size}); aborted"
                            )
                        h.update(chunk)
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"download of {redact_url(url)} failed: {type(exc).__name__}: "
                                f"{redact_url(str(exc))}", transient=True) from exc
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"cannot write {part}: {exc}", transient=True) from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if got != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"downloaded {got} bytes but the desired state announced {size}")
        if h.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(f"sha256 of the download {h.hexdigest()[:16]}… does not match the announced {sha256[:16]}…")
        os.replace(part, dest)
        return dest

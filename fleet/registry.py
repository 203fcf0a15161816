"""The bundle registry: verified uploads, a content-addressed artifact store, versions, download URLs.

A bundle is accepted only after :func:`edgekit.bundle.verify_bundle` succeeds against the trusted
keys; it is then stored once by sha256 (``{store}/ab/abcdef….ekb``) and recorded as ``NAME@VERSION``.
Re-uploading identical bytes is a no-op; a different file under an existing ``NAME@VERSION`` is refused
(versions are immutable). Devices download bundles over HTTP at :meth:`BundleRegistry.download_url`
(``GET {public_url}/api/v1/bundles/{name}/{version}/download``, served by the API from
:meth:`BundleRegistry.file_path`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from edgekit.bundle import verify_bundle
from edgekit.errors import BundleError, FleetError
from edgekit.signing import PublicKey
from edgekit.wire import BundleRef
from fleet.artifacts import ArtifactStore
from fleet.db.base import Database
from fleet.db.models import Bundle, utcnow

__all__ = [
    "DOWNLOAD_ROUTE",
    "BundleConflictError",
    "BundleInfo",
    "BundleNotFoundError",
    "BundleRegistry",
    "parse_bundle_ref",
]

#: the HTTP route (relative to the public URL) that serves a bundle's bytes to devices
DOWNLOAD_ROUTE = "/api/v1/bundles/{name}/{version}/download"


class BundleNotFoundError(FleetError):
    """No bundle ``NAME@VERSION`` in the registry."""


class BundleConflictError(FleetError):
    """``NAME@VERSION`` already exists with different content (versions are immutable)."""


@dataclass(frozen=True)
class BundleInfo:
    """One registered bundle version."""

    name: str
    version: str
    sha256: str
    size: int
    key_id: str | None
    uploaded_at: datetime
    manifest: dict[str, Any]
    path: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: Bundle) -> BundleInfo:
        at = row.uploaded_at
        if at is not None and at.tzinfo is None:  # SQLite hands back naive datetimes; stored as UTC
            at = at.replace(tzinfo=timezone.utc)
        return cls(row.name, row.version, row.sha256, row.size, row.key_id, at, row.manifest, row.path)


def parse_bundle_ref(text: str) -> tuple[str, str]:
    """``NAME@VERSION`` → ``(name, version)``; anything else is a :class:`FleetError`."""
    name, sep, version = (text or "").strip().partition("@")
    if not sep or not name or not version or "@" in version:
        raise FleetError(f"bundle must be NAME@VERSION, got {text!r}")
    return name, version


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class BundleRegistry:
    """Upload, list, inspect and locate bundles (rows in ``bundles``, bytes in ``store``)."""

    def __init__(self, database: Database, store: Path, trusted_keys: list[PublicKey], public_url: str,
                 *, artifacts: ArtifactStore | None = None):
        self.database = database
        self.store = Path(store)
        self.artifacts = artifacts or ArtifactStore(self.store)
        self.trusted_keys = list(trusted_keys)
        self.public_url = public_url.rstrip("/")

    # -- upload ---------------------------------------------------------------------------------
    def upload(self, path: Path) -> BundleInfo:
        """Verify ``path`` against the trusted keys and register it; returns the registered version.

        Raises :class:`~edgekit.errors.BundleVerificationError` (or ``UntrustedKeyError``) when the
        bundle does not verify, :class:`BundleConflictError` when ``NAME@VERSION`` exists with other bytes.
        """
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"bundle {path} does not exist")
        self.store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.store, prefix=".verify-") as tmp:
            verified = verify_bundle(path, self.trusted_keys, Path(tmp) / "x")
        m = verified.manifest
        digest, size = _sha256(path), path.stat().st_size
        existing = self._find(m.name, m.version)
        if existing is not None:
            if existing.sha256 == digest:
                return existing
            raise BundleConflictError(
                f"{m.name}@{m.version} is already registered with sha256 {existing.sha256[:12]}…; "
                "versions are immutable, publish a new version"
            )
        rel = f"{digest[:2]}/{digest}.ekb"
        self.artifacts.put(path, rel)
        row = Bundle(
            name=m.name, version=m.version, sha256=digest, size=size,
            manifest=m.model_dump(mode="json", by_alias=True), key_id=verified.key_id,
            uploaded_at=utcnow(), path=rel,
        )
        try:
            with self.database.session() as s:
                s.add(row)
        except IntegrityError as exc:  # a concurrent upload of the same NAME@VERSION won the race
            again = self._find(m.name, m.version)
            if again is not None and again.sha256 == digest:
                return again
            raise BundleConflictError(f"{m.name}@{m.version} was registered concurrently with other content") from exc
        return BundleInfo.from_row(row)

    def upload_stream(self, fileobj: IO[bytes]) -> BundleInfo:
        """Spool an uploaded stream (e.g. an HTTP body) to the store's temp area, then :meth:`upload` it."""
        self.store.mkdir(parents=True, exist_ok=True)
        fd, tmpname = tempfile.mkstemp(dir=self.store, prefix=".incoming-", suffix=".ekb")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, 1 << 20)
            return self.upload(Path(tmpname))
        finally:
            Path(tmpname).unlink(missing_ok=True)

    # -- queries --------------------------------------------------------------------------------
    def _find(self, name: str, version: str) -> BundleInfo | None:
        with self.database.session() as s:
            row = s.scalar(select(Bundle).where(Bundle.name == name, Bundle.version == version))
            return BundleInfo.from_row(row) if row is not None else None

    def get(self, name: str, version: str) -> BundleInfo:
        """One version; :class:`BundleNotFoundError` when absent."""
        info = self._find(name, version)
        if info is None:
            raise BundleNotFoundError(f"no bundle {name}@{version} in the registry")
        return info

    def list(self, name: str | None = None) -> list[BundleInfo]:
        """All versions (of ``name`` if given), newest upload first."""
        with self.database.session() as s:
            q = select(Bundle).order_by(Bundle.uploaded_at.desc(), Bundle.id.desc())
            if name is not None:
                q = q.where(Bundle.name == name)
            return [BundleInfo.from_row(r) for r in s.scalars(q)]

    def file_path(self, name: str, version: str) -> Path:
        """The stored file to serve for ``name@version``."""
        info = self.get(name, version)
        p = self.artifacts.local_path(info.path)
        if p is None:
            raise BundleNotFoundError(f"{name}@{version} is registered but its file {info.path} is missing "
                                      "from the artifact store")
        return p

    def download_url(self, name: str, version: str) -> str:
        return self.public_url + DOWNLOAD_ROUTE.format(name=quote(name, safe=""), version=quote(version, safe=""))

    def bundle_ref(self, name: str, version: str) -> BundleRef:
        """The :class:`~edgekit.wire.BundleRef` a device's desired state points at."""
        info = self.get(name, version)
        return BundleRef(name=name, version=version, url=self.download_url(name, version),
                         sha256=info.sha256, size=info.size)

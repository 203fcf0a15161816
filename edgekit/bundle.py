"""The model bundle (``NAME-VERSION.ekb``): one tar file, signed, verified before anything trusts it.

Members (flat names, regular files only)::

    manifest.json   the manifest (canonical JSON bytes; these exact bytes are signed)
    signature       JSON {"alg": "ed25519", "key_id": ..., "sig": base64}
    model.onnx      the model (explicit-QDQ ONNX for INT8)
    golden.npz      real inputs with expected outputs and labels, for a device's self-check
    ...             any further file listed in the manifest

:func:`verify_bundle` refuses, each with a specific message: a flipped byte in any file, a missing or
added member, a manifest edited after signing, a key that is not trusted, an unknown schema version, a
member with an absolute path, ``..``, a link or a special file, and declared sizes over the limits. It
reads the archive as a stream of members and writes only plain files it has validated, into the
folder it was given; nothing is ever written outside it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from pydantic import ValidationError

from edgekit.errors import BundleError, BundleVerificationError, UntrustedKeyError
from edgekit.manifest import SCHEMA_VERSION, FileEntry, Manifest
from edgekit.signing import PublicKey, SigningKey

__all__ = [
    "BundleLimits",
    "GoldenSet",
    "VerifiedBundle",
    "create_bundle",
    "file_sha256",
    "load_golden",
    "read_manifest",
    "verify_bundle",
]

MANIFEST = "manifest.json"
SIGNATURE = "signature"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleLimits:
    """Upper bounds checked against the tar headers before any byte is extracted."""

    max_total_bytes: int = 2 << 30  # 2 GiB
    max_members: int = 64
    max_manifest_bytes: int = 4 << 20


@dataclass(frozen=True)
class GoldenSet:
    """A few real inputs with the expected outputs (and labels, for classifiers)."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def to_npz_bytes(self) -> bytes:
        arrays = {f"input:{k}": v for k, v in self.inputs.items()}
        arrays.update({f"output:{k}": v for k, v in self.outputs.items()})
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @property
    def count(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def load_golden(path: Path) -> GoldenSet:
    """Read a golden ``.npz`` (keys ``input:NAME``, ``output:NAME``, optional ``labels``); no pickle."""
    try:
        with np.load(path, allow_pickle=False) as z:
            inputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
            outputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("output:")}
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable golden .npz: {exc}") from exc
    if not inputs:
        raise BundleError(f"{path}: golden set has no 'input:NAME' arrays")
    return GoldenSet(inputs=inputs, outputs=outputs, labels=labels)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose every hash and signature held; its files lie under ``root``."""

    manifest: Manifest
    root: Path
    key_id: str | None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.files["model.onnx"]

    def golden(self) -> GoldenSet | None:
        p = self.files.get("golden.npz")
        return load_golden(p) if p else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def create_bundle(
    out: Path,
    manifest: Manifest | Mapping[str, Any],
    files: Mapping[str, Path | bytes],
    key: SigningKey,
) -> Manifest:
    """Write a signed bundle to ``out``.

    ``manifest`` may omit ``files``: the sha256 and size of every entry of ``files`` are filled in
    here, so a manifest can never disagree with what it ships. Returns the manifest as written.
    """
    entries: dict[str, FileEntry] = {}
    blobs: dict[str, Path | bytes] = {}
    for name, src in files.items():
        if isinstance(src, bytes):
            entries[name] = FileEntry(sha256=hashlib.sha256(src).hexdigest(), size=len(src))
        else:
            src = Path(src)
            if not src.is_file():
                raise BundleError(f"cannot bundle {name}: {src} is not a file")
            entries[name] = FileEntry(sha256=file_sha256(src), size=src.stat().st_size)
        blobs[name] = src
    data = manifest.model_dump(by_alias=True) if isinstance(manifest, Manifest) else dict(manifest)
    data["files"] = entries
    try:
        final = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"invalid manifest: {_first_error(exc)}") from exc
    manifest_bytes = final.to_json_bytes()
    signature = json.dumps(
        {"alg": "ed25519", "key_id": key.id, "sig": base64.b64encode(key.sign(manifest_bytes)).decode()}
    ).encode()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, manifest_bytes)
            _add_bytes(tar, SIGNATURE, signature)
            for name, src in blobs.items():
                if isinstance(src, bytes):
                    _add_bytes(tar, name, src)
                else:
                    info = tarfile.TarInfo(name)
                    info.size = src.stat().st_size
                    info.mode = 0o644
                    info.mtime = int(final.created_at.timestamp())
                    with open(src, "rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "manifest"
    return f"{loc}: {err['msg']}"


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path} does not exist") from exc
    except (tarfile.TarError, OSError) as exc:
        raise BundleVerificationError(f"{path} is not a bundle (not a readable tar archive): {exc}") from exc


def _check_member(m: tarfile.TarInfo) -> None:
    """Refuse anything but a plain, flat, relative regular file."""
    name = m.name
    p = PurePosixPath(name)
    if name.startswith("/") or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise BundleVerificationError(f"member {name!r} has an absolute path")
    if ".." in p.parts:
        raise BundleVerificationError(f"member {name!r} contains '..'")
    if m.issym() or m.islnk():
        target = PurePosixPath(m.linkname)
        outside = target.is_absolute() or ".." in target.parts
        where = "outside the bundle" if outside else "inside the bundle"
        raise BundleVerificationError(f"member {name!r} is a link pointing {where} ({m.linkname!r}); links are refused")
    if not m.isfile():
        raise BundleVerificationError(f"member {name!r} is not a regular file")
    if len(p.parts) != 1:
        raise BundleVerificationError(f"member {name!r} is in a sub-folder; bundle members are flat")


def _scan(tar: tarfile.TarFile, limits: BundleLimits) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for m in tar:
        if len(members) >= limits.max_members:
            raise BundleVerificationError(f"archive has more than {limits.max_members} members")
        _check_member(m)
        if m.name in members:
            raise BundleVerificationError(f"member {m.name!r} appears twice")
        total += m.size
        if total > limits.max_total_bytes:
            raise BundleVerificationError(
                f"archive declares more than {limits.max_total_bytes} bytes (limit); refusing to extract"
            )
        members[m.name] = m
    return members


def read_manifest(path: Path, *, limits: BundleLimits = BundleLimits()) -> Manifest:
    """The manifest of a bundle, parsed but NOT verified (for ``bundle inspect``)."""
    with _open_tar(Path(path)) as tar:
        members = _scan(tar, limits)
        raw = _read_small(tar, members, MANIFEST, limits.max_manifest_bytes)
    return _parse_manifest(raw)


def _read_small(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, limit: int) -> bytes:
    m = members.get(name)
    if m is None:
        raise BundleVerificationError(f"bundle has no {name}")
    if m.size > limit:
        raise BundleVerificationError(f"{name} is {m.size} bytes, over the {limit}-byte limit")
    fh = tar.extractfile(m)
    assert fh is not None  # regular file, checked by _check_member
    return fh.read()


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleVerificationError(f"manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleVerificationError("manifest.json is not a JSON object")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise BundleVerificationError(
            f"unsupported manifest schema {schema!r}; this edgekit reads schema {SCHEMA_VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleVerificationError(f"manifest.json is invalid: {_first_error(exc)}") from exc


def _check_signature(raw_manifest: bytes, raw_sig: bytes, trusted: list[PublicKey]) -> str:
    try:
        sig = json.loads(raw_sig)
        alg, kid, sig_bytes = sig["alg"], sig["key_id"], base64.b64decode(sig["sig"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleVerificationError(f"signature file is malformed: {exc}") from exc
    if alg != "ed25519":
        raise BundleVerificationError(f"unsupported signature algorithm {alg!r}")
    candidates = [k for k in trusted if k.id == kid]
    if not candidates:
        known = ", ".join(k.id for k in trusted) or "none"
        raise UntrustedKeyError(f"bundle is signed by key {kid}, which is not trusted (trusted: {known})")
    if not any(k.verify(sig_bytes, raw_manifest) for k in candidates):
        raise BundleVerificationError(
            f"signature does not match the manifest for key {kid} (manifest edited after signing?)"
        )
    return kid


def verify_bundle(
    path: Path,
    trusted_keys: list[PublicKey] | None,
    dest: Path,
    *,
    limits: BundleLimits = BundleLimits(),
    require_signature: bool = True,
) -> VerifiedBundle:
    """Verify ``path`` and extract its files into ``dest`` (created; must be empty or absent).

    Order: member safety and size limits (headers only) → signature over the manifest bytes → schema
    version → member list equals the manifest's → sha256 and size of each file while streaming it out.
    On any failure the partially written files are removed and a :class:`BundleVerificationError`
    names what failed. ``require_signature=False`` (inspection tools only) checks hashes alone.
    """
    path, dest = Path(path), Path(dest)
    if require_signature and not trusted_keys:
        raise UntrustedKeyError("no trusted public key given; cannot verify the signature")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BundleError(f"extraction folder {dest} is not empty")
    try:
        return _verify_into(path, trusted_keys or [], dest, limits, require_signature)
    except BaseException:
        for child in dest.iterdir():
            child.unlink(missing_ok=True)
        raise


def _verify_into(
    path: Path, trusted: list[PublicKey], dest: Path, limits: BundleLimits, require_signature: bool
) -> VerifiedBundle:
    with _open_tar(path) as tar:
        members = _scan(tar, limits)
        raw_manifest = _read_small(tar, members, MANIFEST, limits.max_manifest_bytes)
        kid = None
        if require_signature:
            raw_sig = _read_small(tar, members, SIGNATURE, 4096)
            kid = _check_signature(raw_manifest, raw_sig, trusted)
        manifest = _parse_manifest(raw_manifest)

        expected = set(manifest.files)
        present = set(members) - {MANIFEST, SIGNATURE}
        if missing := sorted(expected - present):
            raise BundleVerificationError(f"file(s) listed in the manifest are missing: {', '.join(missing)}")
        if extra := sorted(present - expected):
            raise BundleVerificationError(f"file(s) not listed in the manifest were added: {', '.join(extra)}")

        out: dict[str, Path] = {}
        for name, entry in manifest.files.items():
            m = members[name]
            if m.size != entry.size:
                raise BundleVerificationError(f"{name}: size {m.size} does not match the manifest's {entry.size}")
            target = dest / name
            src = tar.extractfile(m)
            assert src is not None
            digest = _copy_hashing(src, target)
            if digest != entry.sha256:
                raise BundleVerificationError(f"{name}: sha256 mismatch (file altered or corrupted)")
            out[name] = target
        (dest / MANIFEST).write_bytes(raw_manifest)
    return VerifiedBundle(manifest=manifest, root=dest, key_id=kid, files=out)


def _copy_hashing(src: IO[bytes], target: Path) -> str:
    h = hashlib.sha256()
    # O_EXCL + O_NOFOLLOW: never follow or overwrite something planted in the folder.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        for chunk in _chunks(src):
            h.update(chunk)
            fh.write(chunk)
    return h.hexdigest()


def _chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(_CHUNK):
        yield chunk

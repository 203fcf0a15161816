"""Writing key material to disk: private files are 0600 from their first byte, replacements are atomic.

A private key must never exist on disk with looser permissions, not even for the moment between
``open`` and ``chmod``; and a device reading its certificate while ``provision --renew`` rewrites it must
see either the old or the new file, never half of one. Both rules live here so every writer follows them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekit.errors import ConfigError

__all__ = ["write_private", "write_public"]


def _write_atomic(path: Path, data: bytes, mode: int) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Atomically write a secret (private key) readable by its owner only (mode 0600)."""
    return _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> Path:
    """Atomically write a public file (certificate, CRL, config) with mode 0644."""
    return _write_atomic(path, data, 0o644)

"""On-disk cache of intermediate artifacts keyed by (input artifact hash, pass config hash).

A pass writes into a private temporary folder; only a complete artifact is renamed into place
(``os.rename`` is atomic within one filesystem), so an interrupted run (Ctrl-C) never leaves a
half-written entry under a valid key — at worst a ``.tmp-*`` folder that the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.compress.artifact import ARTIFACT_JSON, Artifact
from edgekit.errors import CompressError

__all__ = ["ArtifactCache", "cache_key"]

_STALE_TMP_S = 3600


def cache_key(input_sha256: str, pass_name: str, config: dict[str, Any], extra: str = "") -> str:
    """The key of the artifact a pass derives from an input with a given config."""
    raw = json.dumps([input_sha256, pass_name, config, extra], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


class ArtifactCache:
    """A folder of ``<key>/`` artifacts plus ``<key>/record.json`` with the pass's record."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale()

    def _clean_stale(self) -> None:
        now = time.time()
        for p in self.root.glob(".tmp-*"):
            try:
                if now - p.stat().st_mtime > _STALE_TMP_S or not _pid_alive(p.name):
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass

    def get(self, key: str) -> tuple[Artifact, dict[str, Any]] | None:
        """The cached artifact and its record, or None (a corrupt entry counts as a miss and is removed)."""
        d = self.root / key
        if not (d / ARTIFACT_JSON).is_file():
            return None
        try:
            art = Artifact.load(d, verify=True)
            record = json.loads((d / "record.json").read_text()) if (d / "record.json").is_file() else {}
        except (CompressError, ValueError, OSError):
            shutil.rmtree(d, ignore_errors=True)
            return None
        return art, record

    def build(
        self, key: str, producer: Callable[[Path], tuple[Artifact, dict[str, Any]]]
    ) -> tuple[Artifact, dict[str, Any]]:
        """Run ``producer(tmp_dir)`` → (artifact written there, record) and publish it under ``key``."""
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
        try:
            art, record = producer(tmp)
            if Path(art.root) != tmp:
                raise CompressError("a pass must write its artifact into the folder it was given")
            (tmp / "record.json").write_text(json.dumps(record, sort_keys=True, default=str))
            final = self.root / key
            try:
                os.rename(tmp, final)
            except OSError:
                # Another run published the same key first: same inputs, same config, keep theirs.
                shutil.rmtree(tmp, ignore_errors=True)
                if self.get(key) is None:
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact.load(final), record


def _pid_alive(tmp_name: str) -> bool:
    try:
        pid = int(tmp_name.split("-")[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()

"""Where bundle bytes live: a local folder (fleet-in-a-box) or an object store (production).

:class:`ArtifactStore` keeps every bundle under a content key (``ab/abcdef….ekb``). With
``artifact_store: s3://bucket/prefix`` (or ``gs://``, ``hdfs://``, ``file://``; any URI
``pyarrow.fs`` understands, credentials from the usual environment) the object store is the source of
truth shared by every fleet replica, and ``artifact_dir`` is a local cache the HTTP API serves from:
a replica that lacks a bundle fetches it on first use. Without it, the local folder is the store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import ConfigError, FleetError

__all__ = ["ArtifactStore"]


class ArtifactStore:
    """Content-addressed bundle storage: ``put`` once, ``local_path`` to serve (fetched if needed)."""

    def __init__(self, cache_dir: Path, remote_uri: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.remote_uri = remote_uri
        self._fs = None
        self._root = ""
        if remote_uri:
            try:
                from pyarrow import fs
            except ImportError as exc:
                raise ConfigError(f"artifact_store {remote_uri!r} needs pyarrow (pip install 'edgekit[fleet]')") from exc
            try:
                self._fs, self._root = fs.FileSystem.from_uri(remote_uri)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"artifact_store {remote_uri!r} is not a usable object-store URI: {exc}") from exc
            self._root = self._root.rstrip("/")

    def _remote(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def put(self, src: Path, key: str) -> None:
        """Store ``src`` under ``key`` (atomic locally; uploaded once to the object store)."""
        target = self.cache_dir / key
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        if self._fs is not None:
            try:
                if self._fs.get_file_info(self._remote(key)).type.name == "NotFound":
                    parent = self._remote(key).rsplit("/", 1)[0]
                    self._fs.create_dir(parent, recursive=True)
                    with open(target, "rb") as fh, self._fs.open_output_stream(self._remote(key)) as out:
                        shutil.copyfileobj(fh, out, 1 << 20)
            except OSError as exc:
                raise FleetError(f"uploading {key} to the artifact store {self.remote_uri} failed: {exc}") from exc

    def local_path(self, key: str) -> Path | None:
        """A local file holding ``key``'s bytes (fetched from the object store if needed), or ``None``."""
        target = self.cache_dir / key
        if target.is_file():
            return target
        if self._fs is None:
            return None
        try:
            if self._fs.get_file_info(self._remote(key)).type.name == "NotFound":
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
            with os.fdopen(fd, "wb") as out, self._fs.open_input_stream(self._remote(key)) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        except OSError as exc:
            raise FleetError(f"fetching {key} from the artifact store {self.remote_uri} failed: {exc}") from exc
        return target

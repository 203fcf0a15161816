"""A/B model slots under the state directory, switched atomically through a pointer file.

Layout::

    STATE/slots/a/bundle.ekb      the downloaded bundle (verified again at every boot)
    STATE/slots/a/files/          its verified, extracted files
    STATE/slots/b/...
    STATE/slots.json              the pointer: active/previous slot, soak state, boot counter

``slots.json`` is only ever replaced whole (write to a temporary file, fsync, ``os.replace``, fsync
the folder), so after a crash it names either the old or the new active slot, never half of each.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.bundle import VerifiedBundle, verify_bundle
from edgekit.errors import AgentError
from edgekit.signing import PublicKey

__all__ = ["SlotName", "SlotPointer", "SlotRecord", "SlotStore"]

SlotName = Literal["a", "b"]
BUNDLE_FILE = "bundle.ekb"


class SlotRecord(BaseModel):
    """What one slot holds."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    slot: SlotName
    name: str
    version: str
    sha256: str


class SlotPointer(BaseModel):
    """The persisted switch: which slot serves, which is the fallback, and the soak window's state."""

    model_config = ConfigDict(extra="ignore")
    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    #: the active slot is new and not yet marked good
    soaking: bool = False
    soak_started: float | None = None
    #: boots since the switch while still soaking (crash-loop detection)
    boots_in_soak: int = 0
    rollout_id: str | None = None
    generation: int = 0
    #: sha256 of bundles that failed their checks here (not retried)
    failed: list[str] = Field(default_factory=list)
    #: sha256 of the bundle installed from the command line / config (``bundle:``)
    seed_sha256: str | None = None


class SlotStore:
    """Slots and pointer under ``root`` (the agent's state directory)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pointer_path = self.root / "slots.json"
        for s in ("a", "b"):
            (self.root / "slots" / s).mkdir(parents=True, exist_ok=True)

    def slot_dir(self, slot: SlotName) -> Path:
        return self.root / "slots" / slot

    def bundle_path(self, slot: SlotName) -> Path:
        return self.slot_dir(slot) / BUNDLE_FILE

    def read(self) -> SlotPointer:
        try:
            raw = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return SlotPointer()
        except OSError as exc:
            raise AgentError(f"cannot read {self.pointer_path}: {exc}") from exc
        try:
            return SlotPointer.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            # Only os.replace ever writes it, so this is outside tampering or disk damage: start clean
            # rather than refuse to boot; the slots themselves are re-verified anyway.
            raise AgentError(f"{self.pointer_path} is corrupt: {exc}") from exc

    def write(self, ptr: SlotPointer) -> None:
        data = ptr.model_dump_json(indent=2).encode()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".slots.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.pointer_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def inactive(self, ptr: SlotPointer) -> SlotName:
        return "b" if ptr.active is not None and ptr.active.slot == "a" else "a"

    def clear(self, slot: SlotName) -> Path:
        """Empty a slot (it is about to receive a new bundle); returns its folder."""
        d = self.slot_dir(slot)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def extract(self, slot: SlotName, trusted: list[PublicKey], *, max_bytes: int | None = None) -> VerifiedBundle:
        """Verify the slot's bundle (hashes + signature) into a fresh ``files/`` folder."""
        from edgekit.bundle import BundleLimits

        bundle = self.bundle_path(slot)
        if not bundle.is_file():
            raise AgentError(f"slot {slot} holds no bundle")
        files = self.slot_dir(slot) / "files"
        shutil.rmtree(files, ignore_errors=True)
        limits = BundleLimits(max_total_bytes=max_bytes) if max_bytes else BundleLimits()
        vb = verify_bundle(bundle, trusted, files, limits=limits)
        _fsync_dir(files)
        return vb


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

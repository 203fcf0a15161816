"""The unit a pass consumes and produces: an immutable, content-hashed model artifact on disk.

An :class:`Artifact` is a folder of plain files (``model.onnx``; or ``weights.pt`` + ``structure.json``
for a PyTorch module built by a factory; or a TorchScript / ``torch.export`` file) described by
``artifact.json``. Its ``sha256`` covers every file's name and bytes, so two artifacts with the same hash
hold the same model, and the cache can key derived artifacts by it. Nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import CompressError
from edgekit.manifest import TensorSpec

__all__ = ["ARTIFACT_JSON", "Artifact", "hash_files"]

ARTIFACT_JSON = "artifact.json"
ArtifactKind = Literal["torch", "onnx"]


def hash_files(root: Path, names: list[str]) -> str:
    """sha256 over the sorted (name, content) pairs of ``names`` under ``root``."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b"\0")
        with open(root / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A model at one stage of the pipeline; never mutated (a pass writes a new one)."""

    kind: ArtifactKind
    root: Path
    files: tuple[str, ...]
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: JSON-able facts: ``format`` (factory|torchscript|export|onnx), ``factory``, ``precision``, ...
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def format(self) -> str:
        return str(self.meta.get("format", "onnx" if self.kind == "onnx" else "factory"))

    @property
    def onnx_path(self) -> Path:
        if self.kind != "onnx":
            raise CompressError(f"artifact {self.sha256[:12]} is a {self.kind} model, not ONNX")
        return self.root / "model.onnx"

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise CompressError(f"artifact {self.sha256[:12]} has no file {name!r}")
        return self.root / name

    def size_bytes(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files if f != "structure.json")

    @classmethod
    def create(
        cls,
        kind: ArtifactKind,
        root: Path,
        files: list[str],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        meta: dict[str, Any] | None = None,
    ) -> Artifact:
        """Hash ``files`` under ``root`` and write ``artifact.json`` describing them."""
        root = Path(root)
        for f in files:
            if not (root / f).is_file():
                raise CompressError(f"artifact file {f} was not written to {root}")
        art = cls(kind, root, tuple(sorted(files)), hash_files(root, files), tuple(inputs), tuple(outputs),
                  dict(meta or {}))
        (root / ARTIFACT_JSON).write_text(json.dumps(art.describe(), indent=1, sort_keys=True))
        return art

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": list(self.files),
            "sha256": self.sha256,
            "inputs": [s.model_dump() for s in self.inputs],
            "outputs": [s.model_dump() for s in self.outputs],
            "meta": self.meta,
        }

    @classmethod
    def load(cls, root: Path, *, verify: bool = False) -> Artifact:
        """Read ``artifact.json`` under ``root`` (``verify`` re-hashes the files)."""
        root = Path(root)
        try:
            d = json.loads((root / ARTIFACT_JSON).read_text())
            art = cls(
                d["kind"], root, tuple(d["files"]), d["sha256"],
                tuple(TensorSpec.model_validate(s) for s in d["inputs"]),
                tuple(TensorSpec.model_validate(s) for s in d["outputs"]),
                dict(d.get("meta", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CompressError(f"{root} does not hold a readable artifact: {exc}") from exc
        if verify and hash_files(root, list(art.files)) != art.sha256:
            raise CompressError(f"artifact in {root} does not match its recorded hash")
        return art

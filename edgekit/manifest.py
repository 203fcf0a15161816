"""The bundle manifest (``manifest.json``), schema version 1.

The manifest is the contract between the compression toolchain, the fleet registry and the device
agent. It is JSON validated by pydantic; unknown keys are rejected so a typo never passes silently.
``schema`` is checked before anything else so an older reader says clearly that it is too old.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "SCHEMA_VERSION",
    "DTYPES",
    "FileEntry",
    "Lineage",
    "Manifest",
    "PassRecord",
    "TensorSpec",
    "Tolerance",
    "canonical_json",
    "sha256_json",
]

SCHEMA_VERSION = 1

#: dtypes a tensor spec may name (numpy names; ONNX element types map onto these).
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output: its name, numpy dtype and shape; a string dim is symbolic (``"batch"``)."""

    name: str = Field(min_length=1, max_length=256)
    dtype: Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
    shape: list[int | str]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int | str]) -> list[int | str]:
        for d in shape:
            if isinstance(d, int) and d < 0:
                raise ValueError(f"dimension {d} is negative; use a name for a symbolic dimension")
            if isinstance(d, str) and not d:
                raise ValueError("a symbolic dimension needs a name")
        return shape

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete ``shape`` fits this spec (symbolic dims match any size)."""
        if len(shape) != len(self.shape):
            return False
        return all(isinstance(d, str) or d == s for d, s in zip(self.shape, shape, strict=True))

    def concrete(self, batch: int = 1) -> tuple[int, ...]:
        """A concrete shape with every symbolic dimension set to ``batch``."""
        return tuple(d if isinstance(d, int) else batch for d in self.shape)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Tolerance(_Strict):
    """How closely a device must reproduce ``golden.npz`` after an install."""

    atol: float = Field(default=1e-3, ge=0)
    rtol: float = Field(default=1e-3, ge=0)
    #: minimum fraction of golden samples whose predicted class equals the golden label
    min_golden_accuracy: float | None = Field(default=None, ge=0, le=1)


class PassRecord(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float | None = None


class Lineage(_Strict):
    source_model_sha256: str | None = None
    recipe: dict[str, Any] | None = None
    recipe_sha256: str | None = None
    passes: list[PassRecord] = Field(default_factory=list)
    calibration_data_sha256: str | None = None
    tool_versions: dict[str, str] = Field(default_factory=dict)


class Manifest(_Strict):
    """Everything a verifier, registry or device needs to know about one bundle."""

    schema_: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    task: Literal["classification", "regression", "embedding", "detection", "other"] = "classification"
    files: dict[str, FileEntry]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = None
    precision: Literal["fp32", "fp16", "int8", "mixed"] = "fp32"
    #: metrics per target profile, e.g. ``{"x86-avx2": {"accuracy": 0.99, "p50_ms": 0.21}}``
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    tolerance: Tolerance = Field(default_factory=Tolerance)
    #: whether inputs may contain NaN/Inf (the agent rejects them when False)
    allow_non_finite: bool = False
    lineage: Lineage = Field(default_factory=Lineage)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 1-128 of letters, digits, '.', '_' or '-', starting alphanumeric")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError("version must be 1-64 of letters, digits, '.', '+', '_' or '-'")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for fname in files:
            if not _FILE.match(fname) or fname in ("manifest.json", "signature"):
                raise ValueError(f"file name {fname!r} is not allowed in a bundle (flat, plain names only)")
        if "model.onnx" not in files:
            raise ValueError("a bundle must carry model.onnx")
        return files

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> Manifest:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names: {names}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.ekb"

    def to_json_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", by_alias=True))


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace): what gets hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()

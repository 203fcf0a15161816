"""Device profiles: what a class of device is and how models should run on it.

Profiles are YAML files under ``devices/profiles/`` (shipped as package data). This module holds the
schema and the loader; it finds the built-in folder as *data* (``importlib.resources``), so the core
does not import the device agent's code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ProfileError

__all__ = ["DeviceProfile", "QuantizationHints", "builtin_profiles_dir", "load_profile", "load_profiles"]


class QuantizationHints(BaseModel):
    """Which INT8 flavour runs well here (U8S8 saturates on AVX2 without VNNI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activation_type: Literal["uint8", "int8"] = "int8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    per_channel: bool = True


class DeviceProfile(BaseModel):
    """A class of device: hardware facts plus how to run models on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    arch: Literal["x86_64", "aarch64", "armv7l"]
    accelerator: Literal["none", "cuda"] = "none"
    #: substrings matched against the device-tree model / GPU name to recognise the board
    board_match: list[str] = Field(default_factory=list)
    #: CPU features the profile requires (``/proc/cpuinfo`` flag names, e.g. ``avx2``, ``avx512_vnni``)
    cpu_features: list[str] = Field(default_factory=list)
    #: runtimes in order of preference; the first available one is used
    runtime_preference: list[Literal["tensorrt", "onnxruntime", "torch"]] = Field(min_length=1)
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)
    threads: int = Field(ge=1, le=256)
    memory_budget_mb: int = Field(ge=16)
    quantization: QuantizationHints = Field(default_factory=QuantizationHints)


def builtin_profiles_dir() -> Path:
    return Path(str(resources.files("devices") / "profiles"))


def _load_file(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping")
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ProfileError(f"{path}: {loc}: {err['msg']}") from exc
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name {profile.name!r} does not match the file name")
    return profile


def load_profiles(directory: Path | None = None) -> dict[str, DeviceProfile]:
    directory = directory or builtin_profiles_dir()
    return {p.stem: _load_file(p) for p in sorted(Path(directory).glob("*.yaml"))}


def load_profile(name_or_path: str | Path, directory: Path | None = None) -> DeviceProfile:
    """A profile by name (built-in) or by path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return _load_file(p)
    profiles = load_profiles(directory)
    try:
        return profiles[str(name_or_path)]
    except KeyError:
        raise ProfileError(
            f"unknown device profile {name_or_path!r}; known: {', '.join(sorted(profiles))}"
        ) from None

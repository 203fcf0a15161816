"""What a rollout is asked to do: bundle, selector, waves, soak and gate thresholds (validated).

**Waves are cumulative percentages of the devices the selector picks**: ``1,10,50,100`` means wave 1
brings 1% of them to the new bundle, wave 2 brings the total to 10%, then 50%, then everyone. Each wave
holds at least one device (when any are left); percentages must strictly increase and end at 100.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import ConfigError, RolloutError

__all__ = ["RolloutSpec", "parse_duration", "parse_waves", "wave_sizes"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float | int) -> float:
    """``300s``, ``5m``, ``1h``, ``250ms`` or a bare number of seconds → seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise RolloutError(f"duration must be a finite number ≥ 0, got {text}")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise RolloutError(f"duration {text!r} is not like 300s, 5m, 1h or 250ms")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_waves(text: str | list[float]) -> list[float]:
    """``"1,10,50,100"`` (``%`` optional) → ``[1.0, 10.0, 50.0, 100.0]``, validated."""
    if isinstance(text, str):
        parts = [p.strip().rstrip("%").strip() for p in text.split(",")]
        try:
            waves = [float(p) for p in parts]
        except ValueError as exc:
            raise RolloutError(f"waves {text!r}: each wave is a cumulative percentage, e.g. 1,10,50,100") from exc
    else:
        waves = [float(w) for w in text]
    if not waves:
        raise RolloutError("at least one wave is needed (e.g. 100)")
    for w in waves:
        if not math.isfinite(w) or w <= 0 or w > 100:
            raise RolloutError(f"wave {w:g}% is out of range: each wave is a cumulative percentage in (0, 100]")
    if any(b <= a for a, b in zip(waves, waves[1:], strict=False)):
        raise RolloutError(f"waves {waves}: cumulative percentages must strictly increase")
    if waves[-1] != 100:
        raise RolloutError(f"waves {waves}: the last wave must be 100 (every selected device)")
    return waves


def wave_sizes(total: int, waves: list[float]) -> list[int]:
    """How many devices each wave adds, for ``total`` devices (each wave ≥ 1 while devices remain)."""
    sizes, done = [], 0
    for w in waves:
        cum = min(total, max(math.ceil(total * w / 100 - 1e-9), done + 1))
        sizes.append(cum - done)
        done = cum
    return sizes


class RolloutSpec(BaseModel):
    """A validated rollout request (as the CLI and the API accept it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: str = Field(description="NAME@VERSION of a registered bundle")
    selector: str = "all"
    waves: list[float] = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    soak_s: float = Field(default=300.0, ge=0)
    #: max fraction of a wave's decided devices that failed to install / failed the golden check, and
    #: max request error rate in the soak window
    max_failure_rate: float = Field(default=0.02, ge=0, le=1)
    #: max relative p95 latency increase vs the previous version on the same devices (0.2 = +20%)
    max_p95_regression: float = Field(default=0.2, ge=0)
    #: max drop of mean prediction confidence vs the previous version on the same devices (drift)
    max_confidence_drop: float = Field(default=0.15, ge=0, le=1)
    install_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("bundle")
    @classmethod
    def _bundle(cls, v: str) -> str:
        name, sep, version = v.strip().partition("@")
        if not sep or not name or not version or "@" in version:
            raise ValueError(f"must be NAME@VERSION, got {v!r}")
        return v.strip()

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        from fleet.selectors import parse_selector

        try:
            return str(parse_selector(v))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("waves", mode="before")
    @classmethod
    def _waves(cls, v):
        return parse_waves(v)

    @field_validator("soak_s", "install_timeout_s", mode="before")
    @classmethod
    def _dur(cls, v):
        return parse_duration(v)

    @classmethod
    def build(cls, **kwargs) -> RolloutSpec:
        """Validate; any problem is one :class:`RolloutError` naming the field."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "rollout"
            msg = str(err.get("ctx", {}).get("error") or err["msg"])
            raise RolloutError(f"rollout {loc}: {msg}") from exc

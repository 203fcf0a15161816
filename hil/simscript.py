"""The simulator's script: how each simulated device and each bundle behaves (YAML or JSON).

Example::

    defaults:                 # every device, every bundle
      latency_ms: 4.0         # mean inference latency of the fake runtime
      latency_jitter: 0.25    # lognormal sigma
      error_rate: 0.0         # fraction of requests that fail
      requests_per_interval: 20
      golden: pass            # outcome of the post-install golden check: pass | fail
      soak: pass              # outcome of the end-of-soak check: pass | fail
      download: ok            # ok | corrupt (hash mismatch) | truncated (short read) | unreachable
                              # (truncated / unreachable are transient: retried with backoff, as the agent)
    bundles:                  # while a bundle is being installed / served: "name@version" or "name"
      "digits@2.0.0": {golden: fail}
      "digits@3.0.0": {latency_ms: 40, error_rate: 0.1}
    devices:                  # fnmatch patterns on the device id; may carry their own "bundles"
      "sim-0000[0-4]": {latency_ms: 25, bundles: {"digits@3.0.0": {soak: fail}}}
    ota: {step_s: 0.1, soak_s: 2.0, retry_min_s: 5.0}
    initial_model: {name: digits, version: 1.0.0}
    tags: [sim]

Precedence, lowest first: ``defaults`` → ``bundles[ref]`` → each matching ``devices`` pattern (in file
order) → that pattern's ``bundles[ref]``. A bad script is one :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ConfigError
from edgekit.wire import ModelRef

__all__ = ["Behaviour", "BehaviourPatch", "DevicePatch", "OtaTiming", "SimScript", "load_script"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BehaviourPatch(_Strict):
    """A partial :class:`Behaviour`: only the fields given override."""

    latency_ms: float | None = Field(default=None, ge=0, le=600_000)
    latency_jitter: float | None = Field(default=None, ge=0, le=5)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    requests_per_interval: int | None = Field(default=None, ge=0, le=1_000_000)
    golden: Literal["pass", "fail"] | None = None
    soak: Literal["pass", "fail"] | None = None
    download: Literal["ok", "corrupt", "truncated", "unreachable"] | None = None


class Behaviour(_Strict):
    """What one device does with one bundle: the fake runtime's latency, errors and check outcomes."""

    latency_ms: float = Field(default=4.0, ge=0, le=600_000)
    latency_jitter: float = Field(default=0.25, ge=0, le=5)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    requests_per_interval: int = Field(default=20, ge=0, le=1_000_000)
    golden: Literal["pass", "fail"] = "pass"
    soak: Literal["pass", "fail"] = "pass"
    download: Literal["ok", "corrupt", "truncated", "unreachable"] = "ok"

    def patched(self, patch: BehaviourPatch | None) -> Behaviour:
        if patch is None:
            return self
        return self.model_copy(update=patch.model_dump(exclude_none=True))


class DevicePatch(BehaviourPatch):
    bundles: dict[str, BehaviourPatch] = Field(default_factory=dict)


class OtaTiming(_Strict):
    #: seconds each OTA step (download, verify, load, check) takes on a simulated device
    step_s: float = Field(default=0.1, ge=0, le=3600)
    #: soak window after the switch; 0 marks the bundle installed right away
    soak_s: float = Field(default=2.0, ge=0, le=86400)
    #: first retry delay after a transient download failure (doubles each time, at most 300 s), as the agent
    retry_min_s: float = Field(default=5.0, gt=0, le=3600)


class SimScript(_Strict):
    defaults: Behaviour = Field(default_factory=Behaviour)
    bundles: dict[str, BehaviourPatch] = Field(default_factory=dict)
    devices: dict[str, DevicePatch] = Field(default_factory=dict)
    ota: OtaTiming = Field(default_factory=OtaTiming)
    initial_model: ModelRef | None = None
    tags: list[str] = Field(default_factory=list)

    def behaviour(self, device_id: str, bundle: ModelRef | None) -> Behaviour:
        """The resolved behaviour of ``device_id`` while installing or serving ``bundle``."""
        keys = [] if bundle is None else [bundle.name, f"{bundle.name}@{bundle.version}"]

        def for_bundle(table: dict[str, BehaviourPatch]) -> list[BehaviourPatch]:
            return [table[k] for k in keys if k in table]

        b = self.defaults
        for p in for_bundle(self.bundles):
            b = b.patched(p)
        for pattern, dev in self.devices.items():
            if fnmatch.fnmatchcase(device_id, pattern):
                b = b.patched(BehaviourPatch.model_validate(dev.model_dump(exclude={"bundles"})))
                for p in for_bundle(dev.bundles):
                    b = b.patched(p)
        return b


def load_script(path: Path | None) -> SimScript:
    """Read a script file (``.yaml``/``.yml``/``.json``); ``None`` gives the defaults."""
    if path is None:
        return SimScript()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--script {path}: cannot read it: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--script {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--script {path}: the script is a mapping (defaults, bundles, devices, ota, ...)")
    try:
        return SimScript.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "script"
        raise ConfigError(f"--script {path}: {loc}: {err['msg']}") from exc

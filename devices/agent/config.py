"""Agent configuration: one ``AgentConfig`` from a YAML file plus ``EDGEKIT_AGENT_*`` environment overrides.

Nested fields are overridden with a double underscore, e.g. ``EDGEKIT_AGENT_SERVER__PORT=9000`` or
``EDGEKIT_AGENT_MQTT__URL=mqtt://broker:1883``. Environment values win over the file. Any problem
(unreadable file, bad YAML, unknown key, wrong type) is one :class:`~edgekit.errors.ConfigError`
naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgekit.errors import ConfigError
from edgekit.wire import valid_device_id

__all__ = [
    "AgentConfig",
    "BatchingConfig",
    "MqttConfig",
    "OtaConfig",
    "ServerConfig",
    "SpoolConfig",
    "WatchdogConfig",
    "load_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    """The Open Inference Protocol v2 HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: request bodies over this many bytes are answered 413
    max_body_bytes: int = Field(default=8 << 20, ge=1024)


class BatchingConfig(_Section):
    """Dynamic batching: off by default (best batch-1 latency)."""

    enabled: bool = False
    max_batch: int = Field(default=32, ge=1, le=4096)
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000)


class MqttConfig(_Section):
    """Broker connection and telemetry cadence; no MQTT at all when ``url`` is empty."""

    url: str | None = None
    device_id: str | None = None
    telemetry_interval_s: float = Field(default=10.0, gt=0, le=86400)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    #: most messages published but not yet acknowledged (PUBACK) at a time
    max_inflight: int = Field(default=100, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    #: renew the client certificate over MQTT once less than this fraction of its lifetime is left
    cert_renew_fraction: float = Field(default=1 / 3, gt=0, lt=1)
    #: how often the certificate's age is checked, and an unanswered renewal request re-sent
    cert_check_interval_s: float = Field(default=3600.0, gt=0, le=86400)
    tags: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{v!r} is not an mqtt:// or mqtts:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r}: bad port ({exc})") from None
        return v

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str | None) -> str | None:
        if v is not None and not valid_device_id(v):
            raise ValueError(f"invalid device id {v!r} (letters, digits, '.', '_', '-'; no '/', '+', '#')")
        return v

    @model_validator(mode="after")
    def _needs_id(self) -> MqttConfig:
        if self.url and not self.device_id:
            raise ValueError("mqtt.url is set but mqtt.device_id is missing")
        return self


class SpoolConfig(_Section):
    """Store-and-forward spool for telemetry and events (SQLite, WAL)."""

    max_messages: int = Field(default=10_000, ge=10, le=10_000_000)


class OtaConfig(_Section):
    """Over-the-air updates: where bundles may come from, how they are trusted and checked."""

    #: public keys (files, or folders of ``*.pub``) whose signatures are trusted
    trusted_keys: list[Path] = Field(default_factory=list)
    max_bundle_bytes: int = Field(default=512 << 20, ge=1024)
    download_timeout_s: float = Field(default=60.0, gt=0)
    #: when non-empty, a desired bundle URL must start with one of these (else: rejected, unauthorised)
    allowed_url_prefixes: list[str] = Field(default_factory=list)
    #: extra HTTP headers for bundle downloads (e.g. an auth token)
    headers: dict[str, str] = Field(default_factory=dict)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    #: a new model is marked good after running this long without a crash or failed check
    soak_s: float = Field(default=60.0, ge=0)
    #: first delay before a failed download is retried (doubles up to 5 minutes)
    retry_min_s: float = Field(default=5.0, gt=0)
    #: boots during one soak window before the agent rolls back (crash loop)
    max_boot_attempts: int = Field(default=3, ge=1, le=100)


class WatchdogConfig(_Section):
    """systemd integration (``Type=notify``, ``WatchdogSec=``)."""

    watchdog_sec: int = Field(default=30, ge=2, le=3600)
    #: an inference probe slower than this counts as a dead inference path
    probe_timeout_s: float = Field(default=5.0, gt=0)
    service_user: str | None = None


class AgentConfig(BaseSettings):
    """Everything the agent needs; all state lives under ``state_dir``."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEKIT_AGENT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    state_dir: Path = Path("/var/lib/edgekit-agent")
    #: device profile name or YAML path; detected from the host when empty
    profile: str | None = None
    #: a bundle to install on first start (quick start); later updates come over the air
    bundle: Path | None = None
    runtime_threads: int | None = Field(default=None, ge=1, le=256)
    server: ServerConfig = Field(default_factory=ServerConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (whose values arrive as init kwargs).
        return env_settings, init_settings

    @property
    def device_id(self) -> str | None:
        return self.mqtt.device_id


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        lines.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(lines) + more


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    """Read ``path`` (YAML mapping; optional), apply ``overrides`` then the environment; validate.

    Relative paths in the file (``state_dir``, ``bundle``, a profile YAML, ``mqtt.ca_file``/``client_cert``/
    ``client_key``, ``ota.trusted_keys`` and the OTA TLS files) are resolved against the file's folder, so a
    provisioned device folder can be moved as a whole. Overrides and the environment are taken as given.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"agent config {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the agent config must be a YAML mapping, not {type(loaded).__name__}")
        data = _resolve_paths(loaded, path.parent.resolve())
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            merged = dict(data.get(key) or {})
            merged.update({k: v for k, v in value.items() if v is not None})
            data[key] = merged
        else:
            data[key] = value
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"invalid agent config: {where}{_format(exc)}") from exc
    except (ValueError, TypeError) as exc:  # e.g. an environment value that is not valid JSON
        raise ConfigError(f"invalid agent config: {exc}") from exc


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not Path(v).is_absolute():
            return str(base / v)
        return v

    out = dict(data)
    for key in ("state_dir", "bundle"):
        if key in out:
            out[key] = fix(out[key])
    if isinstance(out.get("profile"), str) and out["profile"].endswith((".yaml", ".yml")):
        out["profile"] = fix(out["profile"])
    mqtt = out.get("mqtt")
    if isinstance(mqtt, dict):
        mqtt = dict(mqtt)
        for k in ("ca_file", "client_cert", "client_key"):
            if k in mqtt:
                mqtt[k] = fix(mqtt[k])
        out["mqtt"] = mqtt
    ota = out.get("ota")
    if isinstance(ota, dict):
        ota = dict(ota)
        if isinstance(ota.get("trusted_keys"), list):
            ota["trusted_keys"] = [fix(k) for k in ota["trusted_keys"]]
        for k in ("ca_file", "client_cert", "client_key"):
            if k in ota:
                ota[k] = fix(ota[k])
        out["ota"] = ota
    return out

"""``FleetSettings``: every knob of the fleet manager, from defaults, ``EDGEKIT_FLEET_*`` and a YAML file.

Precedence, strongest first: explicit overrides (command-line options) > the ``--config`` YAML file >
``EDGEKIT_FLEET_*`` environment variables > defaults. Fleet-in-a-box defaults: SQLite under the data
dir, a local artifact store, and a broker the fleet starts itself (``broker_url: embedded``).
Production points ``database_url`` at PostgreSQL and ``broker_url`` at an external broker; nothing
else changes. Any invalid value is one :class:`~edgekit.errors.ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgekit.errors import ConfigError

__all__ = ["FleetSettings", "load_settings"]


class FleetSettings(BaseSettings):
    """The fleet manager's configuration (see the module docstring for precedence)."""

    model_config = SettingsConfigDict(env_prefix="EDGEKIT_FLEET_", extra="forbid", validate_default=True)

    #: where the SQLite database, artifact store and broker files live in fleet-in-a-box mode
    data_dir: Path = Path("fleet-data")
    #: SQLAlchemy URL; default ``sqlite:///{data_dir}/fleet.db``; PostgreSQL: ``postgresql+psycopg://…``
    database_url: str | None = None
    #: ``insecure``: the embedded broker is plain TCP and anonymous (fleet-in-a-box trials only, loudly
    #: labelled); ``mtls``: zero trust: the embedded broker is mosquitto with mutual TLS, the per-device ACL
    #: and the CRL of the fleet CA in ``{data_dir}/pki`` (created on the first secure start if missing),
    #: and the fleet's own MQTT clients present the fleet identity
    security: Literal["insecure", "mtls"] = "insecure"
    #: ``embedded`` (start mosquitto, or a Python broker for trials), ``mqtt://host:port``, or
    #: ``mqtts://host:port`` (an external mTLS broker; needs ``security: mtls``)
    broker_url: str = "embedded"
    #: TCP port of the broker the fleet starts itself (``broker_url: embedded``)
    broker_port: int = Field(default=1883, ge=1, le=65535)
    #: interface the embedded broker listens on
    broker_host: str = "0.0.0.0"
    #: ``security: mtls``: TLS port devices connect to (``mqtts://<public host>:8883``)
    broker_tls_port: int = Field(default=8883, ge=1, le=65535)
    #: ``security: mtls``: loopback mTLS listener of the fleet's own clients (device client ids are pinned
    #: to their certificate on ``broker_tls_port``; the fleet's several clients share one identity)
    broker_fleet_port: int = Field(default=8884, ge=1, le=65535)
    #: lifetime of the download token put into each published desired state (re-issued on every publish)
    download_token_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    #: MQTT credentials for an external broker (optional)
    broker_username: str | None = None
    broker_password: str | None = None
    #: where verified bundles are stored, by sha256; default ``{data_dir}/artifacts`` (a local cache when
    #: ``artifact_store`` is set)
    artifact_dir: Path | None = None
    #: object store shared by replicas, e.g. ``s3://bucket/edgekit-bundles`` (any ``pyarrow.fs`` URI)
    artifact_store: str | None = None
    #: HTTP API and dashboard
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    #: base URL devices use to download bundles; default ``http://{host or 127.0.0.1}:{port}``
    public_url: str | None = None
    #: serve bundle downloads without an API token (bundles are signed and verified on the device, but a
    #: model may be confidential: off by default; give agents a read token in their download headers)
    public_downloads: bool = False
    #: trusted bundle-signing public keys (files, or folders of ``*.pub``); ``{data_dir}/trusted-keys/*.pub``
    #: is always added
    trusted_keys: list[Path] = Field(default_factory=list)
    #: MQTT shared-subscription group; replicas of the fleet in one group split the ingest load
    shared_group: str = Field(default="edgekit-fleet", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: run a rollout ticker here; with several replicas, a database lease lets exactly one advance rollouts
    rollout_ticker: bool = True
    #: this replica's name: the ingest's MQTT client id is ``edgekit-fleet-ingest-{replica_id}``
    replica_id: str = Field(default_factory=lambda: _default_replica_id(), pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: speak MQTT 5 for the ingest (session expiry); false for MQTT 3.1.1-only brokers (then a persistent
    #: 3.1.1 session without expiry when ``ingest_session_expiry_s`` > 0)
    mqtt_v5: bool = True
    #: the broker keeps the ingest's session (and queues telemetry for it) this long while the fleet is
    #: down or restarting, so nothing sent meanwhile is lost; 0 = clean sessions (MQTT 5 session expiry)
    ingest_session_expiry_s: int = Field(default=3600, ge=0, le=2**32 - 1)
    #: how often the rollout state machine is ticked
    tick_interval_s: float = Field(default=2.0, gt=0, le=3600)
    #: ingest writer: flush when this many messages are queued, or after this many seconds
    ingest_batch_size: int = Field(default=500, ge=1, le=10_000)
    ingest_flush_s: float = Field(default=0.2, gt=0, le=60)
    #: a device's desired state that was not installed after this long counts as an install failure
    install_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        if v == "embedded":
            return v
        u = urlparse(v)
        if u.scheme not in ("mqtt", "tcp", "mqtts") or not u.hostname:
            raise ValueError("must be 'embedded', mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return v

    @field_validator("database_url")
    @classmethod
    def _db(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return v

    @field_validator("public_url")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        if v is not None:
            u = urlparse(v)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError("must be an http(s):// URL")
            return v.rstrip("/")
        return v

    @model_validator(mode="after")
    def _derive(self) -> FleetSettings:
        if self.security == "mtls" and self.broker_url == "embedded" and self.broker_fleet_port == self.broker_tls_port:
            raise ValueError("broker_fleet_port must differ from broker_tls_port")
        if self.security == "insecure" and self.broker_url.startswith("mqtts://"):
            raise ValueError("an mqtts:// broker needs security: mtls (the fleet's clients present its identity)")
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'fleet.db'}"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.public_url is None:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            self.public_url = f"http://{host}:{self.port}"
        return self

    @property
    def broker_address(self) -> tuple[str, int]:
        """``(host, port)`` the fleet's own clients connect to (the embedded broker is reached on loopback;
        in ``mtls`` mode on its fleet listener)."""
        if self.broker_url == "embedded":
            return "127.0.0.1", self.broker_fleet_port if self.secure else self.broker_port
        u = urlparse(self.broker_url)
        return u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def secure(self) -> bool:
        """Zero-trust mode (``security: mtls``)."""
        return self.security == "mtls"

    @property
    def pki_dir(self) -> Path:
        """The fleet CA, its CRL, the fleet identity and the download-token secret."""
        return self.data_dir / "pki"

    @property
    def database(self) -> str:
        """The resolved database URL (never ``None`` after validation)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'fleet.db'}"

    @property
    def artifacts(self) -> Path:
        """The resolved artifact store folder."""
        return self.artifact_dir or self.data_dir / "artifacts"


def _default_replica_id() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "fleet"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"fleet config {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet config {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"fleet config {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"fleet config {path} must be a mapping of settings, not {type(data).__name__}")
    return data


def load_settings(config: Path | None = None, **overrides: Any) -> FleetSettings:
    """Resolve settings: ``overrides`` (``None`` values ignored) > YAML ``config`` > environment > defaults."""
    data = _read_yaml(config) if config is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FleetSettings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        where = f" in {config}" if config is not None else ""
        raise ConfigError(f"fleet setting {loc!r}{where}: {err['msg']}") from exc

"""``AnalyticsSettings``: where the Iceberg catalog and warehouse live and how the sync batches.

Defaults: a SQL catalog on SQLite and a local warehouse folder under the fleet's data dir. A REST
catalog or an object store is configuration only, e.g. ``EDGEKIT_ANALYTICS_CATALOG='{"type": "rest",
"uri": "https://catalog.example", "warehouse": "s3://bucket/edgekit", "s3.endpoint": "..."}'``; the
properties are handed unchanged to :func:`pyiceberg.catalog.load_catalog`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgekit.errors import ConfigError

__all__ = ["AnalyticsSettings", "load_analytics_settings"]


class AnalyticsSettings(BaseSettings):
    """Iceberg sync configuration, from ``EDGEKIT_ANALYTICS_*`` and explicit overrides."""

    model_config = SettingsConfigDict(env_prefix="EDGEKIT_ANALYTICS_", extra="forbid")

    #: turn the background sync loop off (``sync_once`` still works)
    enabled: bool = True
    #: catalog name passed to ``load_catalog``
    catalog_name: str = Field(default="edgekit", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: catalog properties (``type``, ``uri``, ``warehouse``, credentials...); empty = SQLite + local folder
    catalog: dict[str, str] = Field(default_factory=dict)
    #: Iceberg namespace holding ``telemetry`` and ``events``
    namespace: str = Field(default="edgekit", pattern=r"^[A-Za-z0-9_]{1,64}$")
    #: rows per Iceberg commit (one snapshot per batch)
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    #: seconds between background syncs
    interval_s: float = Field(default=60.0, gt=0, le=86_400)
    #: a row is synced once an id at least as large was visible this long ago, so a slow ingest
    #: transaction holding a lower id cannot commit behind the watermark (PostgreSQL allocates ids
    #: before commit); must exceed the longest ingest transaction. Default: 0 on SQLite, 5 s elsewhere
    settle_s: float | None = Field(default=None, ge=0, le=3600)
    #: snapshots (one per batch) older than this are expired, at most hourly; ``None`` keeps them all
    expire_snapshots_after_s: float | None = Field(default=7 * 86_400, ge=0)

    def catalog_properties(self, data_dir: Path) -> dict[str, str]:
        """The catalog properties, with the embedded defaults filled in under ``data_dir/analytics``."""
        if self.catalog:
            return dict(self.catalog)
        root = (Path(data_dir) / "analytics").resolve()
        root.mkdir(parents=True, exist_ok=True)
        (root / "warehouse").mkdir(exist_ok=True)
        return {"type": "sql", "uri": f"sqlite:///{root / 'catalog.db'}", "warehouse": (root / "warehouse").as_uri()}


def load_analytics_settings(**overrides: Any) -> AnalyticsSettings:
    """Environment + overrides (``None`` ignored); an invalid value is a :class:`ConfigError` naming it."""
    try:
        return AnalyticsSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "analytics"
        raise ConfigError(f"analytics setting {loc!r}: {err['msg']}") from exc

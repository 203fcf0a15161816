"""Analytics sync: the fleet's telemetry and events, appended in batches to Apache Iceberg tables."""

from fleet.analytics.iceberg import BackgroundSync, IcebergSync, SyncResult, run_sync_loop, sync_once
from fleet.analytics.settings import AnalyticsSettings, load_analytics_settings

__all__ = [
    "AnalyticsSettings",
    "BackgroundSync",
    "IcebergSync",
    "SyncResult",
    "load_analytics_settings",
    "run_sync_loop",
    "sync_once",
]

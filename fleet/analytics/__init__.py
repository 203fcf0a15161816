"""Analytics sync: the fleet's telemetry and events, appended in batches to Apache Iceberg tables."""

from fleet.analytics.iceberg import IcebergSync, SyncResult, run_sync_loop, sync_once
from fleet.analytics.settings import AnalyticsSettings

__all__ = ["AnalyticsSettings", "IcebergSync", "SyncResult", "run_sync_loop", "sync_once"]

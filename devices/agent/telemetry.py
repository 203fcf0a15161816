"""Builds the periodic ``Telemetry`` payload: latency, requests, errors, queue, host stats, drift."""

from __future__ import annotations

import os

import psutil

from edgekit.wire import ModelRef, Telemetry

from .drift import DriftMonitor
from .host import ModelHost
from .metrics import AgentMetrics

__all__ = ["TelemetryBuilder", "host_temperature_c"]


def host_temperature_c() -> float | None:
    """The hottest sensor reading, where the device exposes one."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current is not None]
    return float(max(readings)) if readings else None


class TelemetryBuilder:
    """One call per interval: takes (and resets) the interval's statistics."""

    def __init__(self, device_id: str, interval_s: float, host: ModelHost, metrics: AgentMetrics,
                 drift: DriftMonitor, *, queue_depth=lambda: 0, evicted=lambda: 0):
        self.device_id = device_id
        self.interval_s = interval_s
        self.host = host
        self.metrics = metrics
        self.drift = drift
        self.queue_depth = queue_depth
        self.evicted = evicted
        self._proc = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless

    def take(self) -> dict:
        """The interval's values (everything but ``seq``), reset for the next interval."""
        requests, errors, client_errors, latency = self.metrics.interval.take()
        model = self.host.current
        return {
            "device_id": self.device_id,
            "interval_s": self.interval_s,
            "model": ModelRef(name=model.name, version=model.version) if model else None,
            "requests": requests,
            "errors": errors,
            "client_errors": client_errors,
            "latency": latency,
            "queue_depth": int(self.queue_depth()),
            "cpu_percent": float(psutil.cpu_percent(interval=None)),
            "memory_mb": float(self._proc.memory_info().rss / (1 << 20)),
            "temperature_c": host_temperature_c(),
            "drift": self.drift.snapshot(reset_interval=True),
            "spool_evicted": int(self.evicted()),
        }

    def build(self, values: dict, seq: int) -> Telemetry:
        return Telemetry(seq=seq, **values)

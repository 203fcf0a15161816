"""Prometheus metrics of one agent (a private registry, nothing global) and per-interval telemetry stats."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgekit.wire import LatencyStats

__all__ = ["CONTENT_TYPE_LATEST", "OTA_STATES", "AgentMetrics", "IntervalStats"]

OTA_STATES = [
    "idle", "downloading", "verifying", "loading", "checking", "soaking", "installed", "failed", "rolled_back",
]
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class IntervalStats:
    """Requests, errors and latency percentiles since the last :meth:`take` (bounded memory).

    Requests refused as malformed (``client_error``) are counted apart: they say nothing about the
    model, so they stay out of ``requests``, ``errors`` and the latency percentiles that rollout gates
    judge a model by.
    """

    def __init__(self, max_samples: int = 20_000):
        self._lock = threading.Lock()
        self._lat: deque[float] = deque(maxlen=max_samples)
        self.requests = 0
        self.errors = 0
        self.client_errors = 0

    def observe(self, latency_s: float, outcome: str) -> None:
        with self._lock:
            if outcome == "client_error":
                self.client_errors += 1
                return
            self.requests += 1
            if outcome != "ok":
                self.errors += 1
            self._lat.append(latency_s)

    def take(self) -> tuple[int, int, int, LatencyStats]:
        """``(requests, errors, client_errors, latency)`` of the interval, then reset."""
        with self._lock:
            lat = np.fromiter(self._lat, dtype=np.float64)
            req, err, client = self.requests, self.errors, self.client_errors
            self._lat.clear()
            self.requests = self.errors = self.client_errors = 0
        if lat.size == 0:
            return req, err, client, LatencyStats()
        p50, p95, p99 = np.percentile(lat * 1000, [50, 95, 99])
        return req, err, client, LatencyStats(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
                                              mean_ms=float(lat.mean() * 1000))


class AgentMetrics:
    """The agent's Prometheus series: requests, errors, latency, batch sizes, model version, OTA state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgekit_agent_requests", "Inference requests by outcome.",
                                ["model", "outcome"], registry=r)
        self.errors = Counter("edgekit_agent_errors", "Errors by kind.", ["kind"], registry=r)
        self.latency = Histogram("edgekit_agent_request_latency_seconds", "Inference request latency.",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgekit_agent_batch_size", "Rows per executed model run.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("edgekit_agent_queue_depth", "Requests waiting to be batched.", registry=r)
        self.model_info = Gauge("edgekit_agent_model_info", "The model being served (value 1).",
                                ["name", "version"], registry=r)
        self.ota_state = Enum("edgekit_agent_ota_state", "Over-the-air update state.", states=OTA_STATES,
                              registry=r)
        self.spool_depth = Gauge("edgekit_agent_spool_messages", "Messages waiting in the spool.", registry=r)
        self.spool_evicted = Gauge("edgekit_agent_spool_evicted", "Spooled messages evicted (full).", registry=r)
        self.interval = IntervalStats()
        self._model_labels: tuple[str, str] | None = None

    def observe_request(self, model: str, latency_s: float, outcome: str) -> None:
        """``outcome``: ``ok``, ``client_error`` or ``server_error``."""
        self.requests.labels(model, outcome).inc()
        if outcome == "ok":
            self.latency.labels(model).observe(latency_s)
        else:
            self.errors.labels(outcome).inc()
        self.interval.observe(latency_s, outcome)

    def set_model(self, name: str | None, version: str | None) -> None:
        if self._model_labels is not None:
            self.model_info.remove(*self._model_labels)
            self._model_labels = None
        if name is not None and version is not None:
            self.model_info.labels(name, version).set(1)
            self._model_labels = (name, version)

    def set_ota_state(self, state: str) -> None:
        self.ota_state.state(state)

    def render(self) -> bytes:
        return generate_latest(self.registry)

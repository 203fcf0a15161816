"""The health gate at the end of a wave's soak, computed from ingested telemetry and events.

Signals, each against the rollout's thresholds (see :class:`~fleet.rollouts.spec.RolloutSpec`):

- **install failures**: failed / decided devices of the wave (download, verify, load or golden check
  failed, agent rolled back, install timed out) > ``max_failure_rate``;
- **error rate**: sum(errors) / sum(requests) of the new version's telemetry in the soak window
  > ``max_failure_rate``;
- **p95 latency**: median over devices of the new version's mean p95 in the soak window, against the
  median of the same devices' mean p95 on their previous version before the wave started; a relative
  increase > ``max_p95_regression`` fails;
- **drift**: mean prediction confidence (telemetry ``drift.confidence_mean``) dropping by more than
  ``max_confidence_drop`` against the previous version on the same devices, or drift alarms (events
  ``drift*`` at warning/error) from more than ``max_failure_rate`` of the wave's devices.

Signals with no data (no baseline, no requests) are reported as such and do not fail the gate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.db.models import Event, Rollout, RolloutDevice, RolloutWave, Telemetry
from fleet.db.util import chunked

__all__ = ["BASELINE_ROWS", "GateResult", "evaluate_gate"]

#: how many of a device's most recent telemetry rows on its previous version form its baseline
BASELINE_ROWS = 50


@dataclass
class GateResult:
    """The verdict and the numbers behind it (stored on the wave, shown by ``rollout status``)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, **self.metrics}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _per_device_means(rows: list[tuple[str, float | None]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for device_id, value in rows:
        if value is not None:
            acc.setdefault(device_id, []).append(float(value))
    return {d: sum(v) / len(v) for d, v in acc.items()}


def _baselines(s: Session, members: list[RolloutDevice], before: datetime) -> list[tuple[str, float | None,
                                                                                       float | None]]:
    """``(device, p95, confidence)`` of each member's last ``BASELINE_ROWS`` telemetry rows on its previous
    version before ``before``: one windowed query per chunk of devices (SQLite ≥ 3.25, PostgreSQL)."""
    out: list[tuple[str, float | None, float | None]] = []
    by_version: dict[tuple[str, str], list[str]] = {}
    for m in members:
        if m.previous_name and m.previous_version:
            by_version.setdefault((m.previous_name, m.previous_version), []).append(m.device_id)
    for (name, version), ids in by_version.items():
        for part in chunked(ids):
            rank = func.row_number().over(partition_by=Telemetry.device_id, order_by=Telemetry.received_at.desc())
            inner = (
                select(Telemetry.device_id, Telemetry.p95_ms, Telemetry.drift, rank.label("rn"))
                .where(Telemetry.device_id.in_(part), Telemetry.model_name == name,
                       Telemetry.model_version == version, Telemetry.received_at < before)
                .subquery()
            )
            for device_id, p95, drift, _ in s.execute(select(inner).where(inner.c.rn <= BASELINE_ROWS)):
                conf = (drift or {}).get("confidence_mean")
                out.append((device_id, p95, float(conf) if isinstance(conf, (int, float)) else None))
    return out


def _confidence(t: Telemetry) -> float | None:
    value = (t.drift or {}).get("confidence_mean")
    return float(value) if isinstance(value, (int, float)) else None


def evaluate_gate(s: Session, rollout: Rollout, wave: RolloutWave, members: list[RolloutDevice]) -> GateResult:
    """Evaluate the gate of ``wave`` (whose soak started at ``wave.soak_started_at``).

    Windows are on the fleet's receive time, not the device's ``ts``: a board without a real-time
    clock (a Raspberry Pi before NTP) stamps 1970, and its soak-window rows must still count.
    """
    result = GateResult(passed=True)
    m = result.metrics
    installed = [r for r in members if r.state == "installed"]
    failed = [r for r in members if r.state == "failed"]
    decided = len(installed) + len(failed)
    m.update(devices=len(members), installed=len(installed), failed=len(failed),
             waiting=len(members) - decided)
    failure_rate = len(failed) / decided if decided else 0.0
    m["failure_rate"] = round(failure_rate, 4)
    if failure_rate > rollout.max_failure_rate:
        result.reasons.append(
            f"install failures {len(failed)}/{decided} ({failure_rate:.1%}) > max {rollout.max_failure_rate:.1%}"
        )

    ids = [r.device_id for r in installed]
    start = wave.soak_started_at or wave.started_at
    new_rows: list[Telemetry] = []
    if ids and start is not None:
        for part in chunked(ids):
            new_rows.extend(s.scalars(select(Telemetry).where(
                Telemetry.device_id.in_(part),
                Telemetry.model_name == rollout.bundle_name,
                Telemetry.model_version == rollout.bundle_version,
                Telemetry.received_at >= start,
            )))
    m["telemetry_rows"] = len(new_rows)

    requests = sum(t.requests for t in new_rows)
    errors = sum(t.errors for t in new_rows)
    m["requests"], m["errors"] = requests, errors
    if requests:
        error_rate = errors / requests
        m["error_rate"] = round(error_rate, 4)
        if error_rate > rollout.max_failure_rate:
            result.reasons.append(f"error rate {error_rate:.1%} > max {rollout.max_failure_rate:.1%}")
    else:
        m["error_rate"] = None

    base_rows = _baselines(s, installed, wave.started_at) if wave.started_at is not None else []
    new_p95 = _per_device_means([(t.device_id, t.p95_ms) for t in new_rows])
    old_p95 = _per_device_means([(d, p95) for d, p95, _ in base_rows])
    both = sorted(set(new_p95) & set(old_p95))
    p_new, p_old = _median([new_p95[d] for d in both]), _median([old_p95[d] for d in both])
    m["p95_new_ms"], m["p95_previous_ms"], m["p95_devices"] = p_new, p_old, len(both)
    if p_new is not None and p_old:
        regression = p_new / p_old - 1.0
        m["p95_regression"] = round(regression, 4)
        if regression > rollout.max_p95_regression:
            result.reasons.append(
                f"p95 latency {p_old:.2f} → {p_new:.2f} ms (+{regression:.0%}) > max +{rollout.max_p95_regression:.0%}"
            )
    else:
        m["p95_regression"] = None

    new_conf = _per_device_means([(t.device_id, _confidence(t)) for t in new_rows])
    old_conf = _per_device_means([(d, conf) for d, _, conf in base_rows])
    cboth = sorted(set(new_conf) & set(old_conf))
    c_new, c_old = _median([new_conf[d] for d in cboth]), _median([old_conf[d] for d in cboth])
    m["confidence_new"], m["confidence_previous"] = c_new, c_old
    if c_new is not None and c_old is not None and c_old - c_new > rollout.max_confidence_drop:
        result.reasons.append(
            f"mean confidence dropped {c_old:.3f} → {c_new:.3f} (> {rollout.max_confidence_drop:.2f}): drift"
        )

    alarmed: set[str] = set()
    if ids and start is not None:
        for part in chunked(ids):
            alarmed.update(s.scalars(select(Event.device_id).distinct().where(
                Event.device_id.in_(part),
                Event.kind.like("drift%"),
                Event.level.in_(("warning", "error")),
                Event.received_at >= start,
            )))
    alarms = len(alarmed)
    m["drift_alarm_devices"] = alarms
    if installed and alarms / len(installed) > rollout.max_failure_rate:
        result.reasons.append(f"drift alarms from {alarms}/{len(installed)} devices")

    result.passed = not result.reasons
    return result

"""Compare what the probe measured on a target with what the bundle promises for that profile.

The manifest's ``metrics[profile]`` holds what the toolchain measured (or promised) for a device
class. Each key is read as follows:

* ``max_X`` / ``min_X``: a hard budget on the measured ``X`` (no slack), e.g. ``max_p95_ms: 2.0``.
* ``accuracy``: the measured top-1 may be at most ``max_accuracy_drop`` below it; measured on only the
  golden samples (no ``--data``), the allowed drop is at least 2/n for n samples (one sample is 1/n).
* ``*_ms`` (``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms``): measured ≤ promised × (1 + ``latency_slack``).
* ``throughput_per_s``: measured ≥ promised / (1 + ``latency_slack``).
* ``peak_rss_mb`` / ``memory_mb``: measured peak RSS ≤ promised × (1 + ``latency_slack``).
* ``size_mb``: the model file on the target is at most 1% larger than recorded.
* anything else: shown, not checked ("info").

Whatever the manifest says, three checks always apply: the golden outputs match within the manifest's
``tolerance`` (atol/rtol), golden accuracy reaches ``tolerance.min_golden_accuracy`` when set, and peak
memory stays within the profile's ``memory_budget_mb``. The verdict is the AND of every check.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.manifest import Manifest
from edgekit.profiles import DeviceProfile

__all__ = ["Check", "HilReport", "Slack", "judge", "measured_value"]


class Slack(BaseModel):
    """How far a target may miss the manifest's recorded figures (budgets named ``max_``/``min_`` get none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_slack: float = Field(default=0.5, ge=0, description="relative slack on latency, throughput, memory")
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1, description="absolute accuracy drop allowed")


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    measured: float | None
    limit: float | None
    op: Literal["<=", ">=", "==", "info"]
    passed: bool | None  # None: informational
    note: str = ""


class HilReport(BaseModel):
    """The outcome of ``edgekit hil run``: what was measured where, each check, and the verdict."""

    model_config = ConfigDict(frozen=True)

    target: str
    bundle: str
    profile: str
    runtime: str
    verdict: Literal["pass", "fail"]
    checks: list[Check]
    measured: dict[str, Any]


def measured_value(result: dict[str, Any], name: str) -> float | None:
    """A measured figure by metric name from a probe result (``None`` when the probe has no such figure)."""
    lat = result.get("latency") or {}
    if name in lat:
        return lat[name]
    if name in ("peak_rss_mb", "memory_mb"):
        return result.get("peak_rss_mb")
    if name in ("throughput_per_s", "accuracy", "size_mb"):
        return result.get(name)
    return None


def _compare(name: str, measured: float | None, limit: float, op: str, note: str = "") -> Check:
    if measured is None:
        return Check(name=name, measured=None, limit=limit, op=op, passed=False, note="not measured on the target")
    ok = measured <= limit if op == "<=" else measured >= limit
    return Check(name=name, measured=measured, limit=limit, op=op, passed=ok, note=note)


def _metric_check(key: str, value: float, result: dict[str, Any], slack: Slack) -> Check:
    if key.startswith(("max_", "min_")):
        name = key[4:]
        return _compare(key, measured_value(result, name), value, "<=" if key.startswith("max_") else ">=", "hard budget")
    if key == "accuracy":
        drop = slack.max_accuracy_drop
        n = result.get("accuracy_samples")
        if result.get("accuracy_source", "").startswith("golden") and n:
            drop = max(drop, 2.0 / n)
        return _compare(
            "accuracy", result.get("accuracy"), value - drop, ">=",
            f"manifest {value:.4g} − {drop:.3g} ({result.get('accuracy_source', '')})",
        )
    if key == "size_mb":
        return _compare(key, result.get("size_mb"), value * 1.01, "<=", f"manifest {value:.4g} + 1%")
    s = slack.latency_slack
    if key.endswith("_ms") or key in ("peak_rss_mb", "memory_mb"):
        return _compare(key, measured_value(result, key), value * (1 + s), "<=", f"manifest {value:.4g} × {1 + s:g}")
    if key == "throughput_per_s":
        return _compare(key, measured_value(result, key), value / (1 + s), ">=", f"manifest {value:.4g} ÷ {1 + s:g}")
    return Check(name=key, measured=measured_value(result, key), limit=value, op="info", passed=None,
                 note="recorded in the manifest; not measured by hil")


def judge(
    result: dict[str, Any], manifest: Manifest, profile: DeviceProfile, *, target: str, slack: Slack = Slack()
) -> HilReport:
    """Turn a probe result into checks and a pass/fail verdict (the same function for every target)."""
    checks: list[Check] = []
    golden = result.get("golden")
    if golden is None:
        checks.append(Check(name="golden outputs", measured=None, limit=None, op="info", passed=None,
                            note="bundle has no golden outputs"))
    else:
        tol = manifest.tolerance
        checks.append(Check(
            name="golden outputs", measured=golden.get("max_abs_error"), limit=tol.atol, op="<=",
            passed=bool(golden.get("passed")), note=f"allclose(atol={tol.atol:g}, rtol={tol.rtol:g}) max |err|",
        ))
        if tol.min_golden_accuracy is not None:
            checks.append(_compare("golden accuracy", golden.get("accuracy"), tol.min_golden_accuracy, ">=",
                                   "manifest tolerance.min_golden_accuracy"))
    host = result.get("host") or {}
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(str(host.get("arch", "")).lower(), host.get("arch"))
    if arch and arch != profile.arch:
        checks.append(Check(name="host", measured=None, limit=None, op="info", passed=None,
                            note=f"target is {arch}, profile {profile.name} is {profile.arch}: a stand-in, not the device"))
    skipped = result.get("runtimes_unavailable") or {}
    if skipped:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        checks.append(Check(name="runtime", measured=None, limit=None, op="info", passed=None,
                            note=f"ran on {result.get('runtime')}; the profile prefers {', '.join(skipped)} ({why}) — "
                                 "figures are not those of the intended runtime"))
    checks.append(_compare("peak memory (MB)", result.get("peak_rss_mb"), float(profile.memory_budget_mb), "<=",
                           f"profile {profile.name} memory budget"))
    promised = manifest.metrics.get(profile.name)
    if promised is None:
        checks.append(Check(name=f"metrics[{profile.name}]", measured=None, limit=None, op="info", passed=None,
                            note="the manifest records no metrics for this profile"))
    else:
        checks.extend(_metric_check(k, float(v), result, slack) for k, v in sorted(promised.items()))
    verdict = "pass" if all(c.passed is not False for c in checks) else "fail"
    return HilReport(
        target=target, bundle=result.get("bundle", manifest.ref), profile=profile.name,
        runtime=result.get("runtime", "?"), verdict=verdict, checks=checks, measured=result,
    )

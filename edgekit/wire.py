"""MQTT topics and payloads, version 1 (``edgekit/v1/{device}/...``).

Every payload is JSON validated by the pydantic models here, shared by the device agent (publisher)
and the fleet manager (subscriber). Each model carries ``v`` (payload version) so both sides can
evolve; unknown fields are ignored on read so a newer agent can talk to an older fleet. String fields
are bounded to the widths the fleet stores (names 128, versions and ids 64), so an over-long value is a
rejected payload on every database alike, never a silent truncation or a row PostgreSQL refuses. Telemetry and
events carry a per-device sequence number ``seq`` (one counter per device across both streams) so
gaps and replays from a device's spool are visible and de-duplicated.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import WireError

__all__ = [
    "NAMESPACE",
    "WIRE_VERSION",
    "BundleRef",
    "CertAnswer",
    "CertRequest",
    "Desired",
    "DriftStats",
    "Event",
    "InputStats",
    "LatencyStats",
    "ModelRef",
    "Reported",
    "Status",
    "Telemetry",
    "decode",
    "encode",
    "parse_topic",
    "topic",
]

NAMESPACE = "edgekit/v1"
WIRE_VERSION = 1
KINDS = ("status", "telemetry", "events", "desired", "reported", "csr", "cert")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Kind = Literal["status", "telemetry", "events", "desired", "reported", "csr", "cert"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


def topic(device_id: str, kind: Kind) -> str:
    """The topic of one device's stream, e.g. ``edgekit/v1/cam-17/telemetry``."""
    if not valid_device_id(device_id):
        raise WireError(f"invalid device id {device_id!r} (letters, digits, '.', '_', '-'; no '/', '+', '#')")
    if kind not in KINDS:
        raise WireError(f"unknown topic kind {kind!r}")
    return f"{NAMESPACE}/{device_id}/{kind}"


def subscription(kind: Kind, *, shared_group: str | None = None) -> str:
    """Wildcard subscription for one stream of all devices; ``$share/GROUP/...`` when shared."""
    base = f"{NAMESPACE}/+/{kind}"
    return f"$share/{shared_group}/{base}" if shared_group else base


def parse_topic(t: str) -> tuple[str, Kind]:
    """``edgekit/v1/{device}/{kind}`` → ``(device, kind)``; anything else is a :class:`WireError`."""
    parts = t.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != NAMESPACE or parts[3] not in KINDS:
        raise WireError(f"not an edgekit v1 topic: {t!r}")
    if not valid_device_id(parts[2]):
        raise WireError(f"invalid device id in topic {t!r}")
    return parts[2], parts[3]  # type: ignore[return-value]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = WIRE_VERSION
    device_id: str = Field(pattern=_DEVICE_ID.pattern)
    ts: datetime = Field(default_factory=_now)


Name = Annotated[str, Field(min_length=1, max_length=128)]
Short = Annotated[str, Field(min_length=1, max_length=64)]


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: Name
    version: Short


class Status(_Payload):
    """Retained birth (``online``) and last-will death (``offline``) of a device."""

    state: Literal["online", "offline"]
    agent_version: Short | None = None
    profile: Short | None = None
    model: ModelRef | None = None
    #: ``key=value`` or plain labels; ``group=NAME`` sets the device's group
    tags: list[Short] = Field(default_factory=list, max_length=64)


class LatencyStats(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None


class InputStats(BaseModel):
    """Running mean/std of one input (or of one named feature) since the agent started."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    count: int = 0
    mean: float = 0.0
    std: float = 0.0


class DriftStats(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    inputs: dict[str, InputStats] = Field(default_factory=dict)
    #: predicted-class counts in this interval (label or index → count)
    predictions: dict[str, int] = Field(default_factory=dict)
    confidence_mean: float | None = None
    confidence_p10: float | None = None


class Telemetry(_Payload):
    """Periodic health of a device and its model; one per interval."""

    seq: int = Field(ge=0)
    replayed: bool = False
    interval_s: float = Field(default=10.0, gt=0)
    model: ModelRef | None = None
    #: requests the model answered or failed on (client errors excluded)
    requests: int = Field(default=0, ge=0)
    #: requests that failed on the device's side (runtime/model failures): what rollout gates judge
    errors: int = Field(default=0, ge=0)
    #: requests refused as malformed (4xx): the caller's fault, not in ``requests``/``latency``
    client_errors: int = Field(default=0, ge=0)
    latency: LatencyStats = Field(default_factory=LatencyStats)
    queue_depth: int = Field(default=0, ge=0)
    cpu_percent: float | None = None
    memory_mb: float | None = None
    temperature_c: float | None = None
    drift: DriftStats = Field(default_factory=DriftStats)
    #: spooled messages evicted (oldest first) because the spool was full, counted since start
    spool_evicted: int = Field(default=0, ge=0)


class Event(_Payload):
    """Something that happened: an OTA step, an error, a rejected command."""

    seq: int = Field(ge=0)
    replayed: bool = False
    kind: str = Field(min_length=1, max_length=64)  # e.g. "ota.download", "ota.rollback", "desired.rejected"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str = ""
    rollout_id: Short | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class BundleRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: Name
    version: Short
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Desired(_Payload):
    """Retained desired state, written by the fleet manager; the agent converges to it.

    ``action="install"`` (the default): run ``bundle``. ``action="rollback"``: stop running ``bundle``
    and go back to the device's own previous slot — how the fleet undoes a wave on devices whose
    previous model it never had (one installed locally from a seed bundle, say).
    """

    bundle: BundleRef
    action: Literal["install", "rollback"] = "install"
    rollout_id: Short | None = None
    generation: int = Field(default=0, ge=0)


class GoldenResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    passed: bool
    accuracy: float | None = None
    max_abs_error: float | None = None


class Reported(_Payload):
    """The device's actual state: what it serves and where its OTA stands."""

    active: ModelRef | None = None
    previous: ModelRef | None = None
    ota_state: Literal[
        "idle", "downloading", "verifying", "loading", "checking", "soaking", "installed", "failed", "rolled_back"
    ] = "idle"
    rollout_id: Short | None = None
    generation: int = 0
    golden: GoldenResult | None = None
    last_error: str | None = None


class CertRequest(_Payload):
    """Device → fleet on ``csr`` (QoS 1): certify a key the device just generated (it never leaves the device).

    ``request_id`` is :func:`edgekit.certs.csr_fingerprint` of the CSR, so a re-sent request is the same one.
    """

    request_id: Short
    csr_pem: str = Field(min_length=1, max_length=16384)
    reason: Literal["expiring", "requested"] = "expiring"


class CertAnswer(_Payload):
    """Fleet → device on ``cert`` (QoS 1, retained, so an offline device gets it when it returns).

    Exactly one of: ``cert_pem`` (the certificate issued for request ``request_id``), ``error`` (why
    request ``request_id`` was refused), or ``renew=True`` (the fleet asks the device to renew now:
    ``edgekit fleet renew``).
    """

    request_id: Short | None = None
    cert_pem: str | None = Field(default=None, max_length=16384)
    serial: Short | None = None
    not_after: datetime | None = None
    error: str | None = Field(default=None, max_length=2048)
    renew: bool = False


P = TypeVar("P", bound=_Payload)

MODELS: dict[str, type[_Payload]] = {
    "status": Status,
    "telemetry": Telemetry,
    "events": Event,
    "desired": Desired,
    "reported": Reported,
    "csr": CertRequest,
    "cert": CertAnswer,
}


def encode(payload: _Payload) -> bytes:
    return payload.model_dump_json(exclude_none=False).encode()


def decode(kind: Kind, raw: bytes | str, model: type[P] | None = None) -> P:
    """Validate a payload of ``kind``; a bad one raises :class:`WireError` with the first problem."""
    cls = model or MODELS.get(kind)
    if cls is None:
        raise WireError(f"unknown payload kind {kind!r}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{kind}: payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WireError(f"{kind}: payload is not a JSON object")
    if data.get("v", WIRE_VERSION) != WIRE_VERSION:
        raise WireError(f"{kind}: unsupported payload version {data.get('v')!r} (this side speaks {WIRE_VERSION})")
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or kind
        raise WireError(f"{kind}: {loc}: {err['msg']}") from exc

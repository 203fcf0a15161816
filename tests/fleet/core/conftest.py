"""Fixtures of the fleet-core tests: a migrated SQLite database, a registry with real signed bundles,
and — for the rollout unit tests only — a fake clock, a recording publisher and simulated devices that
speak through the real ingest store (``fleet.store.store_batch``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgekit import wire
from fleet.db.base import Database
from fleet.db.migrate import upgrade
from fleet.registry import BundleRegistry
from fleet.rollouts import RolloutManager
from fleet.store import Message, store_batch


class FakeClock:
    def __init__(self, start: datetime | None = None):
        self.t = start or datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class FakePublisher:
    """Records the last desired state written per device; can be made to fail (broker down)."""

    def __init__(self):
        self.retained: dict[str, wire.Desired | None] = {}
        self.history: list[tuple[str, wire.Desired | None]] = []
        self.down = False

    def publish(self, device_id, desired):
        from edgekit.errors import FleetError

        if self.down:
            raise FleetError("broker down")
        self.retained[device_id] = desired
        self.history.append((device_id, desired))


@dataclass
class SimDevice:
    id: str
    model: tuple[str, str] | None = ("tiny", "1.0.0")
    seq: int = 0
    online: bool = False
    seen_generation: int = 0
    #: what this device does with a desired bundle: "ok", "fail" (install fails), "golden" (golden fails)
    behaviour: dict[str, str] = field(default_factory=dict)


class Fleet:
    """Simulated devices feeding the real store; ``converge()`` plays the agent's part."""

    def __init__(self, db: Database, clock: FakeClock, publisher: FakePublisher):
        self.db, self.clock, self.publisher = db, clock, publisher
        self.devices: dict[str, SimDevice] = {}

    def _send(self, kind: str, device_id: str, payload) -> None:
        with self.db.session() as s:
            store_batch(s, [Message(kind, device_id, payload, self.clock())])

    def add(self, device_id: str, *, tags=(), profile="x86-avx2", model=("tiny", "1.0.0"), online=True) -> SimDevice:
        d = SimDevice(device_id, model=model)
        self.devices[device_id] = d
        if online:
            self.up(device_id, tags=tags, profile=profile)
        return d

    def up(self, device_id: str, *, tags=(), profile="x86-avx2") -> None:
        d = self.devices[device_id]
        d.online = True
        model = wire.ModelRef(name=d.model[0], version=d.model[1]) if d.model else None
        self._send("status", device_id, wire.Status(device_id=device_id, state="online", profile=profile,
                                                    tags=list(tags), model=model, ts=self.clock()))

    def down(self, device_id: str) -> None:
        self.devices[device_id].online = False
        self._send("status", device_id, wire.Status(device_id=device_id, state="offline", ts=self.clock()))

    def telemetry(self, device_id: str, *, p95: float = 10.0, requests: int = 100, errors: int = 0,
                  confidence: float | None = 0.9, device_ts=None) -> None:
        d = self.devices[device_id]
        d.seq += 1
        model = wire.ModelRef(name=d.model[0], version=d.model[1]) if d.model else None
        self._send("telemetry", device_id, wire.Telemetry(
            device_id=device_id, seq=d.seq, ts=device_ts or self.clock(), model=model, requests=requests, errors=errors,
            latency=wire.LatencyStats(p95_ms=p95), drift=wire.DriftStats(confidence_mean=confidence)))

    def event(self, device_id: str, kind: str, *, level="info", rollout_id=None, message="") -> None:
        d = self.devices[device_id]
        d.seq += 1
        self._send("events", device_id, wire.Event(device_id=device_id, seq=d.seq, ts=self.clock(), kind=kind,
                                                   level=level, rollout_id=rollout_id, message=message))

    def converge(self) -> list[str]:
        """Every online device acts on a new retained desired state, as an agent would; returns who acted."""
        acted = []
        for device_id, desired in self.publisher.retained.items():
            d = self.devices.get(device_id)
            if d is None or not d.online or desired is None or desired.generation <= d.seen_generation:
                continue
            d.seen_generation = desired.generation
            target = (desired.bundle.name, desired.bundle.version)
            how = d.behaviour.get(desired.bundle.version, "ok")
            prev = wire.ModelRef(name=d.model[0], version=d.model[1]) if d.model else None
            if how == "fail":
                rep = wire.Reported(device_id=device_id, active=prev, ota_state="rolled_back",
                                    rollout_id=desired.rollout_id, generation=desired.generation,
                                    last_error="model failed to load", ts=self.clock())
            elif how == "golden":
                rep = wire.Reported(device_id=device_id, active=prev, ota_state="rolled_back",
                                    rollout_id=desired.rollout_id, generation=desired.generation,
                                    golden=wire.GoldenResult(passed=False, accuracy=0.1),
                                    last_error="golden check failed", ts=self.clock())
            else:
                d.model = target
                rep = wire.Reported(device_id=device_id, active=wire.ModelRef(name=target[0], version=target[1]),
                                    previous=prev, ota_state="installed", rollout_id=desired.rollout_id,
                                    generation=desired.generation, golden=wire.GoldenResult(passed=True, accuracy=1.0),
                                    ts=self.clock())
            self._send("reported", device_id, rep)
            acted.append(device_id)
        return acted

    def version_of(self, device_id: str) -> str | None:
        m = self.devices[device_id].model
        return m[1] if m else None


@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, tiny_onnx, tiny_bundle, signing_keys) -> dict[str, Path]:
    """Signed bundles ``tiny@1.0.0`` (the shared fixture), ``tiny@2.0.0`` and ``tiny@3.0.0``."""
    from runtimes.packaging import bundle_from_onnx

    key, _, _ = signing_keys
    out = {"1.0.0": tiny_bundle}
    d = tmp_path_factory.mktemp("fleet-bundles")
    for v in ("2.0.0", "3.0.0"):
        out[v] = d / f"tiny-{v}.ekb"
        bundle_from_onnx(tiny_onnx, name="tiny", version=v, key=key, out=out[v], labels=["a", "b", "c"])
    return out


@pytest.fixture
def registry(db, tmp_path, signing_keys, bundles) -> BundleRegistry:
    _, pub, _ = signing_keys
    reg = BundleRegistry(db, tmp_path / "artifacts", [pub], "http://fleet.test:8080")
    for path in bundles.values():
        reg.upload(path)
    return reg


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def manager(db, registry, publisher, clock) -> RolloutManager:
    return RolloutManager(db, registry, publisher, clock=clock)


@pytest.fixture
def fleet(db, clock, publisher) -> Fleet:
    return Fleet(db, clock, publisher)

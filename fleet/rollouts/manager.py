"""The rollout state machine: a plain object over the database, driven by :meth:`RolloutManager.tick`.

Lifecycle of a rollout: ``running`` ⇄ ``paused`` → ``completed`` | ``halted`` (a gate failed) |
``aborted`` (an operator stopped it). Each wave goes ``pending`` → ``installing`` (desired state written
for its devices; waiting for them to report) → ``soaking`` (``soak_s`` of real traffic) → ``passed`` |
``failed``. A failed wave halts the rollout and sets *that wave's* devices' desired state back to what
they had before; earlier waves keep the new version, later waves are never touched. ``abort`` does the
same to the wave in flight.

Everything is in the database, and every step is idempotent, so a fleet manager restarted at any point
resumes where it was. Desired state goes out through an outbox: a device row is marked unpublished in
the same transaction that changes its desired state, and :meth:`flush_outbox` publishes (retained, QoS 1)
and clears the mark only once the broker acknowledged it.

Devices in a wave that are offline do not hold the wave up: their desired state is retained on the
broker and they converge when they return (the fleet also re-publishes on their birth). Devices that
first appear mid-rollout and match the selector join the last wave; after a rollout completed, such new
devices are given its bundle directly.

Download tokens: with a ``download_secret``, every desired state is *published* with a fresh download
token for its device in the bundle URL (:func:`fleet.security.download_token.tokenized_desired`); the
stored desired state never holds one, so each re-publish (a device's birth, a download the fleet refused)
carries a live token.

The clock and the publisher are injected, so the whole machine is testable without MQTT or HTTP.
One fleet replica should run the ticker; the API's pause/resume/abort are safe from any thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from edgekit.errors import ConfigError, FleetError, RolloutError
from edgekit.wire import BundleRef, Desired
from fleet.db.base import Database
from fleet.db.models import Device, Event, Rollout, RolloutDevice, RolloutWave
from fleet.db.util import chunked
from fleet.mqtt import DesiredPublisher
from fleet.registry import BundleNotFoundError, BundleRegistry, parse_bundle_ref
from fleet.rollouts.gates import evaluate_gate
from fleet.rollouts.spec import RolloutSpec, wave_sizes
from fleet.security.download_token import DEFAULT_TTL_S, tokenized_desired
from fleet.selectors import parse_selector

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "RolloutManager", "RolloutStatus", "WaveStatus"]

log = logging.getLogger(__name__)

ACTIVE_STATES = ("running", "paused")
#: how many of the most recent completed rollouts keep adopting new devices and tracking stragglers
COMPLETED_TRACKED = 20
FINAL_STATES = ("completed", "halted", "aborted")
#: events (with this rollout's id) that mean an install failed on the device
_FAILURE_EVENTS = ("ota.failed", "ota.rollback", "ota.rolled_back", "ota.skipped", "desired.rejected",
                   "health.failed", "golden.failed")
_INSTALLED_STATES = ("installed", "idle")
_FAILED_STATES = ("failed", "rolled_back")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp the fleet stores is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


class WaveStatus(BaseModel):
    index: int
    percent: float
    state: str
    devices: int
    installed: int
    failed: int
    waiting: int
    rolled_back: int
    started_at: datetime | None = None
    soak_started_at: datetime | None = None
    finished_at: datetime | None = None
    gate: dict[str, Any] | None = None


class RolloutStatus(BaseModel):
    """A rollout as ``rollout status`` and the API show it."""

    id: str
    bundle: str
    selector: str
    state: str
    current_wave: int
    reason: str | None = None
    soak_s: float
    max_failure_rate: float
    max_p95_regression: float
    max_confidence_drop: float
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    created_by: str | None = None
    waves: list[WaveStatus]


class RolloutManager:
    """Create, pause, resume, abort, inspect and advance rollouts (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        registry: BundleRegistry,
        publisher: DesiredPublisher,
        *,
        clock: Callable[[], datetime] = _utcnow,
        download_secret: bytes | None = None,
        download_token_ttl_s: int = DEFAULT_TTL_S,
    ):
        """``download_secret``: put a download token for each device into the URLs it is sent."""
        self.database = database
        self.registry = registry
        self.publisher = publisher
        self.clock = clock
        self.download_secret = download_secret
        self.download_token_ttl_s = download_token_ttl_s
        self._lock = threading.RLock()
        self._refs: dict[tuple[str, str], BundleRef] = {}
        #: device rows preloaded for the rollout being advanced (cleared after each)
        self._devices: dict[str, Device] = {}

    def now(self) -> datetime:
        return aware(self.clock())  # type: ignore[return-value]

    # -- commands -------------------------------------------------------------------------------
    def create(self, spec: RolloutSpec, *, created_by: str | None = None) -> RolloutStatus:
        """Plan a rollout: pick the devices, split them into waves; the first tick starts wave 1.

        Refuses (``RolloutError``) an unknown bundle, a selector that picks no device, and devices that
        are already in another running or paused rollout.
        """
        name, version = parse_bundle_ref(spec.bundle)
        try:
            self.registry.get(name, version)
        except BundleNotFoundError as exc:
            raise RolloutError(str(exc)) from exc
        selector = parse_selector(spec.selector)
        now = self.now()
        rid = "r-" + uuid.uuid4().hex[:12]
        with self._lock, self.database.session() as s:
            devices = [d for d in s.scalars(select(Device).order_by(Device.id)) if selector.matches(d)]
            if not devices:
                raise RolloutError(f"selector {selector} matches no device")
            busy = self._busy_devices(s, [d.id for d in devices])
            if busy:
                sample = ", ".join(f"{d} ({r})" for d, r in sorted(busy.items())[:5])
                raise RolloutError(
                    f"{len(busy)} selected device(s) are in another running or paused rollout: {sample}; "
                    "abort it or narrow the selector"
                )
            rollout = Rollout(
                id=rid, bundle_name=name, bundle_version=version, selector=str(selector),
                waves=list(spec.waves), soak_s=spec.soak_s, max_failure_rate=spec.max_failure_rate,
                max_p95_regression=spec.max_p95_regression, max_confidence_drop=spec.max_confidence_drop,
                install_timeout_s=spec.install_timeout_s, state="running", current_wave=0,
                created_by=created_by, created_at=now, updated_at=now,
            )
            s.add(rollout)
            # A stable pseudo-random order, so wave 1 is not always the alphabetically first devices.
            devices.sort(key=lambda d: hashlib.sha256(f"{rid}/{d.id}".encode()).digest())
            start, members = 0, []
            for i, (pct, size) in enumerate(zip(spec.waves, wave_sizes(len(devices), spec.waves), strict=True)):
                s.add(RolloutWave(rollout_id=rid, index=i, percent=pct, state="pending"))
                members += [self._member_row(rid, d, i) for d in devices[start:start + size]]
                start += size
            s.flush()
            for part in chunked(members, 5000):  # one executemany per chunk, not one ORM object per device
                s.execute(insert(RolloutDevice), part)
        log.info("rollout %s created: %s@%s to %d device(s), waves %s", rid, name, version, len(devices), spec.waves)
        return self.status(rid)

    def pause(self, rollout_id: str) -> RolloutStatus:
        """Stop advancing (no new wave starts, no gate is taken); devices already told keep converging."""
        return self._transition(rollout_id, "pause", {"running": "paused"})

    def resume(self, rollout_id: str) -> RolloutStatus:
        return self._transition(rollout_id, "resume", {"paused": "running"})

    def abort(self, rollout_id: str, reason: str = "aborted by operator") -> RolloutStatus:
        """Stop for good and roll the wave in flight back; finished waves keep the new version."""
        with self._lock:
            try:
                with self.database.session() as s:
                    r = self._get(s, rollout_id)
                    if r.state not in ACTIVE_STATES:
                        raise RolloutError(f"rollout {rollout_id} is {r.state}; only a running or paused rollout "
                                           "can be aborted")
                    wave = self._wave(s, r.id, r.current_wave)
                    if wave is not None and wave.state in ("installing", "soaking"):
                        self._roll_back_wave(s, r, wave, "failed")
                    r.state, r.reason = "aborted", reason
                    r.updated_at = r.finished_at = self.now()
            finally:
                self._devices.clear()
                self._refs.clear()
        self.flush_outbox()
        return self.status(rollout_id)

    def _transition(self, rollout_id: str, verb: str, allowed: dict[str, str]) -> RolloutStatus:
        with self._lock, self.database.session() as s:
            r = self._get(s, rollout_id)
            if r.state not in allowed:
                raise RolloutError(f"cannot {verb} rollout {rollout_id}: it is {r.state}")
            r.state = allowed[r.state]
            r.updated_at = self.now()
        return self.status(rollout_id)

    # -- queries --------------------------------------------------------------------------------
    def status(self, rollout_id: str) -> RolloutStatus:
        with self.database.session() as s:
            return self._status(s, self._get(s, rollout_id))

    def list(self, *, state: str | None = None, limit: int = 100) -> list[RolloutStatus]:
        with self.database.session() as s:
            q = select(Rollout).order_by(Rollout.created_at.desc()).limit(limit)
            if state is not None:
                q = q.where(Rollout.state == state)
            return [self._status(s, r) for r in s.scalars(q)]

    def _status(self, s: Session, r: Rollout) -> RolloutStatus:
        members = list(s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id)))
        waves = []
        for w in s.scalars(select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index)):
            mine = [m for m in members if m.wave == w.index]
            count = {st: sum(1 for m in mine if m.state == st) for st in ("installed", "failed", "rolled_back")}
            waves.append(WaveStatus(
                index=w.index, percent=w.percent, state=w.state, devices=len(mine),
                installed=count["installed"], failed=count["failed"], rolled_back=count["rolled_back"],
                waiting=sum(1 for m in mine if m.state == "desired"),
                started_at=aware(w.started_at), soak_started_at=aware(w.soak_started_at),
                finished_at=aware(w.finished_at), gate=w.gate,
            ))
        return RolloutStatus(
            id=r.id, bundle=f"{r.bundle_name}@{r.bundle_version}", selector=r.selector, state=r.state,
            current_wave=r.current_wave, reason=r.reason, soak_s=r.soak_s, max_failure_rate=r.max_failure_rate,
            max_p95_regression=r.max_p95_regression, max_confidence_drop=r.max_confidence_drop,
            created_at=aware(r.created_at), updated_at=aware(r.updated_at), finished_at=aware(r.finished_at),
            created_by=r.created_by, waves=waves,
        )

    # -- the clock ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every rollout as far as the current state allows, then publish pending desired state.

        A failure in one rollout is logged and does not stop the others (nor the ticker).
        """
        with self._lock:
            self._refs.clear()
            with self.database.session() as s:
                rows = list(s.execute(select(Rollout.id, Rollout.created_at)
                                      .where(Rollout.state.in_(ACTIVE_STATES))))
                # completed rollouts still bring late joiners and stragglers along: the recent ones
                rows += list(s.execute(select(Rollout.id, Rollout.created_at).where(Rollout.state == "completed")
                                       .order_by(Rollout.created_at.desc()).limit(COMPLETED_TRACKED)))
                ids = [rid for rid, _ in sorted(rows, key=lambda r: r[1], reverse=True)]  # newest first
            for rid in ids:
                try:
                    with self.database.session() as s:
                        self._advance(s, self._get(s, rid))
                except Exception:  # noqa: BLE001 - one bad rollout must not stop the fleet's ticker
                    log.exception("rollout %s: tick failed; will retry", rid)
                finally:
                    self._devices.clear()
            self.flush_outbox()

    def _advance(self, s: Session, r: Rollout) -> None:
        now = self.now()
        self._adopt_new_devices(s, r, now)
        if r.state == "completed":  # stragglers (offline during their wave, late joiners) still report in
            self._refresh_members(s, r, now, states=("desired",))
            return
        self._refresh_members(s, r, now)
        if r.state == "paused":
            return
        for _ in range(len(r.waves) + 1):  # several empty or finished waves may pass in one tick
            wave = self._wave(s, r.id, r.current_wave)
            if wave is None:
                return
            before = (wave.state, r.current_wave, r.state)
            self._step_wave(s, r, wave, now)
            s.flush()
            if r.state != "running" or (wave.state, r.current_wave, r.state) == before:
                return

    def _step_wave(self, s: Session, r: Rollout, wave: RolloutWave, now: datetime) -> None:
        members = self._members(s, r.id, wave.index)
        if wave.state == "pending":
            members = self._prefer_online(s, r, wave.index, members)
            self._load_devices(s, [m.device_id for m in members if m.state == "pending"])
            for m in members:
                if m.state == "pending":
                    self._send_new_bundle(s, r, m, now)
            wave.state, wave.started_at = "installing", now
            r.updated_at = now
            log.info("rollout %s: wave %d started (%d devices)", r.id, wave.index + 1, len(members))
            return
        failed = [m for m in members if m.state == "failed"]
        installed = [m for m in members if m.state == "installed"]
        # Halt early once failures exceed the budget even if every other device of the wave succeeds.
        if failed and len(failed) / len(members) > r.max_failure_rate:
            self._halt(s, r, wave, now, f"wave {wave.index + 1}: {len(failed)}/{len(members)} device(s) failed"
                       f" to install ({failed[0].device_id}: {failed[0].error or 'failed'})")
            return
        if wave.state == "installing":
            online = self._online(s, [m.device_id for m in members if m.state == "desired"])
            if online:
                return  # still waiting for devices that can answer
            if not members:
                self._pass(s, r, wave, now, {"passed": True, "reasons": [], "devices": 0})
                return
            if not installed:
                # Everyone left in this wave is offline (online devices were moved forward at its start).
                # With evidence from an earlier wave, go on: their retained desired state waits for them.
                # Without any evidence yet, wait: a rollout never passes on no signal at all.
                if self._any_installed(s, r.id):
                    self._pass(s, r, wave, now, {"passed": True, "reasons": [], "devices": len(members),
                                                 "note": f"all {len(members)} device(s) offline; they converge "
                                                         "when they return"})
                    return
                # devices of later waves may have come online meanwhile: let them take this wave's place
                for m in self._prefer_online(s, r, wave.index, members):
                    if m.state == "pending":
                        self._send_new_bundle(s, r, m, now)
                return
            wave.state, wave.soak_started_at = "soaking", now
            r.updated_at = now
            return
        if wave.state == "soaking":
            soak_start = aware(wave.soak_started_at) or now
            if now < soak_start + timedelta(seconds=r.soak_s):
                return
            gate = evaluate_gate(s, r, wave, members)
            if gate.passed:
                self._pass(s, r, wave, now, gate.as_dict())
            else:
                wave.gate = gate.as_dict()
                self._halt(s, r, wave, now, f"wave {wave.index + 1} gate failed: " + "; ".join(gate.reasons))

    def _prefer_online(self, s: Session, r: Rollout, index: int, members: list[RolloutDevice]) -> list[RolloutDevice]:
        """Swap offline devices of a starting wave with online ones of later waves, one for one.

        A wave's gate needs devices that can answer; offline ones move to a later wave (at worst the
        last), where their retained desired state waits for them.
        """
        online = set(self._online(s, [m.device_id for m in members]))
        offline = [m for m in members if m.state in ("pending", "desired") and m.device_id not in online]
        if not offline:
            return members
        later = list(s.scalars(select(RolloutDevice).where(
            RolloutDevice.rollout_id == r.id, RolloutDevice.wave > index, RolloutDevice.state == "pending")
            .order_by(RolloutDevice.wave.desc(), RolloutDevice.device_id)))
        later_online = set(self._online(s, [m.device_id for m in later]))
        swaps = [m for m in later if m.device_id in later_online]
        for away, forward in zip(offline, swaps, strict=False):
            away.wave, forward.wave = forward.wave, index
            log.info("rollout %s: wave %d takes online %s instead of offline %s", r.id, index + 1,
                     forward.device_id, away.device_id)
        s.flush()
        return self._members(s, r.id, index)

    def _pass(self, s: Session, r: Rollout, wave: RolloutWave, now: datetime, gate: dict[str, Any]) -> None:
        wave.state, wave.finished_at, wave.gate = "passed", now, gate
        r.updated_at = now
        if wave.index + 1 >= len(r.waves):
            r.state, r.finished_at = "completed", now
            log.info("rollout %s completed", r.id)
        else:
            r.current_wave = wave.index + 1
            log.info("rollout %s: wave %d passed", r.id, wave.index + 1)

    def _halt(self, s: Session, r: Rollout, wave: RolloutWave, now: datetime, reason: str) -> None:
        self._roll_back_wave(s, r, wave, "failed")
        r.state, r.reason, r.updated_at, r.finished_at = "halted", reason, now, now
        log.warning("rollout %s halted: %s", r.id, reason)

    def _roll_back_wave(self, s: Session, r: Rollout, wave: RolloutWave, wave_state: str) -> None:
        now = self.now()
        members = self._members(s, r.id, wave.index)
        self._load_devices(s, [m.device_id for m in members])
        for m in members:
            if m.state in ("desired", "installed", "failed"):
                self._send_previous(s, r, m, now)
        wave.state, wave.finished_at = wave_state, now

    # -- members --------------------------------------------------------------------------------
    @staticmethod
    def _member_row(rid: str, d: Device, wave: int) -> dict[str, Any]:
        return {
            "rollout_id": rid, "device_id": d.id, "wave": wave, "state": "pending",
            "previous_name": d.active_name or d.desired_name,
            "previous_version": d.active_version or d.desired_version, "previous_desired": d.desired,
        }

    def _member(self, rid: str, d: Device, wave: int) -> RolloutDevice:
        return RolloutDevice(**self._member_row(rid, d, wave))

    def _adopt_new_devices(self, s: Session, r: Rollout, now: datetime) -> None:
        """Devices that first appeared after the rollout was created and match its selector join it."""
        selector = parse_selector(r.selector)
        in_any_rollout = select(RolloutDevice.id).where(RolloutDevice.device_id == Device.id).exists()
        fresh = s.scalars(select(Device).where(Device.first_seen >= r.created_at, ~in_any_rollout)
                          .order_by(Device.id))
        last = len(r.waves) - 1
        for d in fresh:
            if not selector.matches(d):
                continue
            m = self._member(r.id, d, last)
            s.add(m)
            if r.state == "completed":
                self._send_new_bundle(s, r, m, now)
            elif r.state == "running" and r.current_wave == last:
                wave = self._wave(s, r.id, last)
                if wave is not None and wave.state in ("installing", "soaking"):
                    self._send_new_bundle(s, r, m, now)
            log.info("rollout %s: new device %s joins wave %d", r.id, d.id, last + 1)

    def _refresh_members(
        self, s: Session, r: Rollout, now: datetime, states: tuple[str, ...] = ("desired", "installed")
    ) -> None:
        """Move members on from what their devices reported: every ``desired`` one, and the ``installed``
        ones of the wave in flight (a wave that passed no longer gates anything, so its installed
        devices are not re-read every tick — that keeps a tick cheap at 100,000 devices)."""
        which = RolloutDevice.state == "desired" if "desired" in states else RolloutDevice.state == "__none__"
        if "installed" in states:
            which = or_(which, and_(RolloutDevice.state == "installed", RolloutDevice.wave == r.current_wave))
        members = [m for m in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id, which))]
        if not members:
            return
        devices = {d.id: d for d in s.scalars(
            select(Device).join(RolloutDevice, RolloutDevice.device_id == Device.id)
            .where(RolloutDevice.rollout_id == r.id, which))}
        failures = {
            e.device_id: e
            for e in s.scalars(select(Event).where(Event.rollout_id == r.id, Event.kind.in_(_FAILURE_EVENTS)))
        }
        for m in members:
            d = devices.get(m.device_id)
            if d is None:
                continue
            answered = (d.reported_generation or 0) >= (m.generation or 0) > 0 or d.reported_rollout_id == r.id
            on_target = d.active_name == r.bundle_name and d.active_version == r.bundle_version
            ev = failures.get(m.device_id)
            if ev is not None:
                m.state, m.error = "failed", f"{ev.kind}: {ev.message}".strip(": ")
            elif answered and d.ota_state in _FAILED_STATES:
                m.state, m.error = "failed", d.last_error or f"agent reported {d.ota_state}"
            elif answered and on_target and d.golden_passed is False:
                m.state, m.error = "failed", "golden check failed"
            elif m.state == "desired" and answered and on_target and d.ota_state in _INSTALLED_STATES:
                m.state, m.installed_at = "installed", now
            elif (
                m.state == "desired" and d.online and m.desired_at is not None
                and now - aware(m.desired_at) > timedelta(seconds=r.install_timeout_s)  # type: ignore[operator]
            ):
                m.state, m.error = "failed", f"not installed within {r.install_timeout_s:.0f}s"

    # -- desired state --------------------------------------------------------------------------
    def _bundle_ref(self, name: str, version: str) -> BundleRef:
        # one registry lookup per bundle per tick, not one per device
        key = (name, version)
        if key not in self._refs:
            self._refs[key] = self.registry.bundle_ref(name, version)
        return self._refs[key]

    def _send_new_bundle(self, s: Session, r: Rollout, m: RolloutDevice, now: datetime) -> None:
        ref = self._bundle_ref(r.bundle_name, r.bundle_version)
        m.generation = self._write_desired(s, m.device_id, ref, r.id, now)
        m.state, m.desired_at, m.error = "desired", now, None

    def _send_previous(self, s: Session, r: Rollout, m: RolloutDevice, now: datetime) -> None:
        ref: BundleRef | None = None
        prev = m.previous_desired
        if prev and prev.get("action", "install") == "install" and isinstance(prev.get("bundle"), dict):
            try:
                ref = BundleRef.model_validate(prev["bundle"])
            except ValueError:
                ref = None
        if ref is None and m.previous_name and m.previous_version:
            try:
                ref = self._bundle_ref(m.previous_name, m.previous_version)
            except BundleNotFoundError:
                ref = None
        if ref is None:
            # The fleet never had what the device ran before: tell it to leave this bundle for its own
            # previous slot (the agent keeps one), rather than clearing its desired state and hoping.
            m.error = (m.error + "; " if m.error else "") + "previous bundle not in the registry: device rolls back to its own previous slot"
            m.generation = self._write_desired(s, m.device_id, self._bundle_ref(r.bundle_name, r.bundle_version),
                                               r.id, now, action="rollback")
        else:
            m.generation = self._write_desired(s, m.device_id, ref, r.id, now)
        m.state = "rolled_back"

    def _write_desired(self, s: Session, device_id: str, ref: BundleRef | None, rid: str, now: datetime,
                       action: str = "install") -> int:
        d = self._devices.get(device_id)
        if d is None:
            with s.no_autoflush:
                d = s.get(Device, device_id)
        if d is None:
            raise FleetError(f"device {device_id} vanished from the registry")
        generation = (d.desired_generation or 0) + 1
        d.desired_generation = generation
        d.desired_rollout_id = rid
        if ref is None:
            d.desired, d.desired_name, d.desired_version = None, None, None
        else:
            payload = Desired(device_id=device_id, ts=now, bundle=ref, rollout_id=rid, generation=generation,
                              action=action)
            d.desired = payload.model_dump(mode="json")
            d.desired_name, d.desired_version = (ref.name, ref.version) if action == "install" else (None, None)
        d.desired_published = False
        return generation

    def republish(self, device_id: str) -> None:
        """Mark a device's desired state for re-publishing (e.g. on its birth); the next flush sends it."""
        with self.database.session() as s:
            d = s.get(Device, device_id)
            if d is not None and d.desired is not None:
                d.desired_published = False

    def flush_outbox(self) -> int:
        """Publish every unpublished desired state; a device is marked published only once acknowledged."""
        sent = 0
        with self.database.session() as s:
            pending = [(d.id, d.desired, d.desired_generation) for d in
                       s.scalars(select(Device).where(Device.desired_published.is_(False)))]
        many = getattr(self.publisher, "publish_many", None)
        if many is not None and pending:
            return self._flush_pipelined(many, pending)
        done: list[tuple[str, int]] = []
        for device_id, payload, generation in pending:
            try:
                desired = self._outgoing(Desired.model_validate(payload)) if payload else None
                self.publisher.publish(device_id, desired)
            except FleetError as exc:
                log.warning("desired state of %s not published yet: %s", device_id, exc)
                continue
            done.append((device_id, generation))
            sent += 1
        self._mark_published(done)
        return sent

    def _outgoing(self, desired: Desired) -> Desired:
        """What goes on the wire: the stored desired state with a fresh download token for its device."""
        if self.download_secret is None:
            return desired
        try:
            return tokenized_desired(desired, self.download_secret, ttl_s=self.download_token_ttl_s)
        except ConfigError as exc:  # e.g. a bundle name the token format refuses: publish it without
            log.warning("desired state of %s goes out without a download token: %s", desired.device_id, exc)
            return desired

    def _mark_published(self, done: list[tuple[str, int]]) -> None:
        """Clear the outbox flag of these devices, unless their desired state changed meanwhile."""
        if not done:
            return
        dev = Device.__table__
        with self.database.session() as s:
            s.connection().execute(
                update(dev).where(dev.c.id == bindparam("did"), dev.c.desired_generation == bindparam("gen"))
                .values(desired_published=True),
                [{"did": d, "gen": g} for d, g in done],
            )

    def _flush_pipelined(self, many, pending: list[tuple[str, dict | None, int]]) -> int:
        acked_total = 0
        for part in chunked(pending, 1000):
            items = [(d, self._outgoing(Desired.model_validate(p)) if p else None) for d, p, _ in part]
            try:
                acked = many(items)
            except FleetError as exc:
                log.warning("desired state of %d device(s) not published yet: %s", len(part), exc)
                return acked_total
            self._mark_published([(d, g) for d, _, g in part if d in acked])
            acked_total += len(acked)
            if len(acked) < len(part):
                log.warning("broker acknowledged %d of %d desired states; the rest is retried",
                            len(acked), len(part))
        return acked_total

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _get(s: Session, rollout_id: str) -> Rollout:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        return r

    @staticmethod
    def _wave(s: Session, rid: str, index: int) -> RolloutWave | None:
        return s.scalar(select(RolloutWave).where(RolloutWave.rollout_id == rid, RolloutWave.index == index))

    @staticmethod
    def _members(s: Session, rid: str, wave: int) -> list[RolloutDevice]:
        return list(s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid, RolloutDevice.wave == wave)
                              .order_by(RolloutDevice.device_id)))

    def _load_devices(self, s: Session, ids: list[str]) -> None:
        """Load these device rows at once and keep them for ``_write_desired`` (no query per device)."""
        for part in chunked(ids):
            for d in s.scalars(select(Device).where(Device.id.in_(part))):
                self._devices[d.id] = d

    @staticmethod
    def _any_installed(s: Session, rid: str) -> bool:
        return s.scalar(select(RolloutDevice.id).where(RolloutDevice.rollout_id == rid,
                                                       RolloutDevice.state == "installed").limit(1)) is not None

    @staticmethod
    def _online(s: Session, ids: list[str]) -> list[str]:
        out: list[str] = []
        for part in chunked(ids):
            out.extend(s.scalars(select(Device.id).where(Device.id.in_(part), Device.online.is_(True))))
        return out

    @staticmethod
    def _busy_devices(s: Session, ids: list[str]) -> dict[str, str]:
        wanted = set(ids)
        rows = s.execute(
            select(RolloutDevice.device_id, Rollout.id)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(Rollout.state.in_(ACTIVE_STATES))
        )
        return {d: r for d, r in rows if d in wanted}

"""The OTA state machine of a simulated device (asyncio; one per device, no threads, no disk).

The device agent's :class:`devices.agent.ota.OtaManager` interleaves its states with real I/O (A/B slot
folders, a worker thread and a soak timer per device), which does not scale to a thousand devices in
one process, so this module re-implements the *same sequence, states, event kinds and rules* on
asyncio, with the slots in memory and the runtime a :class:`runtimes.fake.FakeSession`::

    accepted → downloading → verifying → loading → checking → (switch) → soaking → installed

* a failure before the switch keeps the served model (``rolled_back``) or, with none, ``failed``;
* a failed end-of-soak check rolls back to the previous model;
* a bundle that failed verification or its checks is remembered by sha256 and not retried
  (``ota.skipped``); a download that failed for a passing reason (network, truncated body) is an
  ``ota.download_failed`` + ``ota.retry`` with exponential backoff instead;
* malformed or unauthorised desired states are rejected with ``desired.rejected`` and change nothing;
* the desired state that already runs only updates ``generation``/``rollout_id``.

Download and verification are real when a :class:`BundleSource` is given (one fetch + verify per
bundle shared by all devices); the script can make a device see a corrupt, truncated or unreachable
download. The golden and soak outcomes come from the script.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgekit.errors import AgentError, BundleVerificationError, EdgekitError, HealthCheckError, WireError
from edgekit.wire import Desired, GoldenResult, ModelRef, Reported, decode
from hil.simscript import SimScript
from runtimes.bench import synthetic_feeds
from runtimes.fake import FakeRuntime

__all__ = ["BundleSource", "SimOta", "Slot", "TransientDownloadError"]


class TransientDownloadError(AgentError):
    """A download failed for a passing reason (network, server): retried with backoff, never blacklisted."""


class BundleSource(Protocol):
    """Fetches and verifies a bundle once for the whole simulated fleet."""

    async def check(self, desired: Desired) -> ModelRef:
        """Download and verify ``desired.bundle``; its verified ``name@version``, or raise EdgekitError."""
        ...


@dataclass
class Slot:
    ref: ModelRef
    sha256: str
    name: str = "a"


@dataclass
class SimOta:
    """One simulated device's OTA state."""

    device_id: str
    script: SimScript
    event: Callable[..., None]
    report: Callable[[Reported], None]
    source: BundleSource | None = None
    allowed_url_prefixes: tuple[str, ...] = ()
    active: Slot | None = None
    previous: Slot | None = None
    state: str = "idle"
    soaking: bool = False
    rollout_id: str | None = None
    generation: int = 0
    golden: GoldenResult | None = None
    last_error: str | None = None
    failed: list[str] = field(default_factory=list)
    _pending: Desired | None = None
    _worker: asyncio.Task | None = None
    _soak: asyncio.Task | None = None
    _handled: tuple[str, int] | None = None
    _retry: asyncio.Task | None = None
    _retry_delay: float = 0.0
    retries: int = 0
    history: list[str] = field(default_factory=list)

    # -- reporting ---------------------------------------------------------------------------------
    def reported(self) -> Reported:
        return Reported(
            device_id=self.device_id, active=self.active.ref if self.active else None,
            previous=self.previous.ref if self.previous else None, ota_state=self.state,
            rollout_id=self.rollout_id, generation=self.generation, golden=self.golden, last_error=self.last_error,
        )

    def _set_state(self, state: str, *, error: str | None = None) -> None:
        self.state = state
        self.history.append(state)
        if error is not None:
            self.last_error = error
        self.report(self.reported())

    def _event(self, kind: str, message: str, level: str = "info", rollout_id: str | None = None, **data: Any) -> None:
        self.event(kind, message, level=level, rollout_id=rollout_id, data=data)

    # -- desired -----------------------------------------------------------------------------------
    def handle_desired(self, raw: bytes) -> None:
        """Validate, authorise, then queue for the worker (the latest desired state wins)."""
        if not raw:
            return
        try:
            d = decode("desired", raw, Desired)
        except WireError as exc:
            self._event("desired.rejected", f"malformed desired state: {exc}", level="warning")
            return
        problem = self._authorise(d)
        if problem:
            self._event("desired.rejected", problem, level="warning", rollout_id=d.rollout_id)
            return
        self._pending = d
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()  # a newer desired state supersedes a scheduled retry
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _authorise(self, d: Desired) -> str | None:
        if d.device_id != self.device_id:
            return f"desired state addressed to device {d.device_id!r} arrived at {self.device_id!r}"
        url = d.bundle.url
        if not url.startswith(("http://", "https://")):
            return f"bundle URL {url!r} is not http(s)"
        if self.allowed_url_prefixes and not url.startswith(self.allowed_url_prefixes):
            return f"bundle URL {url!r} is not under an allowed prefix (unauthorised source)"
        return None

    async def _work(self) -> None:
        while self._pending is not None:
            d, self._pending = self._pending, None
            try:
                await self.converge(d)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the device must outlive any failure, like the agent
                self._event("ota.failed", f"unexpected error: {type(exc).__name__}: {exc}", level="error")

    async def converge(self, d: Desired) -> None:
        if d.action == "rollback":
            self._fleet_rollback(d)
            return
        key = (d.bundle.sha256, d.generation)
        if self.active is not None and self.active.sha256 == d.bundle.sha256:
            self.generation, self.rollout_id = d.generation, d.rollout_id
            if self._handled != key:
                self._handled = key
                self._set_state("soaking" if self.soaking else "installed")
            return
        if d.bundle.sha256 in self.failed:
            if self._handled != key:
                self._handled = key
                self._event("ota.skipped", f"{d.bundle.name}@{d.bundle.version} failed its checks here before; "
                            "not retried", level="warning", rollout_id=d.rollout_id)
                self._set_state("failed")
            return
        self._handled = key
        await self._install(d)

    def _fleet_rollback(self, d: Desired) -> None:
        """As the agent: the fleet undoes a wave, so leave ``d.bundle`` for the previous slot."""
        key = ("rollback", d.bundle.sha256, d.generation)
        if self._handled == key:
            return
        self._handled = key
        running = self.active is not None and self.active.sha256 == d.bundle.sha256
        self.generation, self.rollout_id = d.generation, d.rollout_id
        if not running:
            self._set_state(self.state)
            return
        ref = f"{d.bundle.name}@{d.bundle.version}"
        if self.previous is None:
            self._event("ota.rollback_refused", f"the fleet asked to roll back {ref}, but there is no previous "
                        "slot to return to; still serving it", level="error", rollout_id=d.rollout_id)
            self._set_state("failed", error=f"no previous slot to roll {ref} back to")
            return
        bad, self.active, self.previous, self.soaking = self.active, self.previous, None, False
        if bad.sha256 not in self.failed:
            self.failed = [*self.failed, bad.sha256][-32:]
        target = f"{self.active.ref.name}@{self.active.ref.version}"
        self._event("ota.rollback", f"the fleet rolled back {ref} (rollout {d.rollout_id}); rolled back to {target}",
                    level="error", rollout_id=d.rollout_id, failed=ref)
        self._set_state("rolled_back")

    # -- install -----------------------------------------------------------------------------------
    async def _install(self, d: Desired) -> None:
        ref = ModelRef(name=d.bundle.name, version=d.bundle.version)
        beh = self.script.behaviour(self.device_id, ref)
        step_s = self.script.ota.step_s
        slot = "b" if (self.active is not None and self.active.name == "a") else "a"
        self._event("ota.accepted", f"installing {ref.name}@{ref.version} into slot {slot}", rollout_id=d.rollout_id,
                    url=d.bundle.url, generation=d.generation)
        step = "downloading"
        try:
            self._set_state(step)
            self._event("ota.download", f"fetching {d.bundle.url}", rollout_id=d.rollout_id, slot=slot)
            await asyncio.sleep(step_s)
            if beh.download == "unreachable":
                raise TransientDownloadError(f"cannot download {d.bundle.url}: connection refused (scripted)")
            if beh.download == "truncated":
                raise TransientDownloadError(f"download of {d.bundle.url} ended after {d.bundle.size // 2} of "
                                             f"{d.bundle.size} bytes (scripted)")
            verified = await self.source.check(d) if self.source is not None else ref

            step = "verifying"
            self._set_state(step)
            await asyncio.sleep(step_s)
            if beh.download == "corrupt":
                raise BundleVerificationError("bundle: sha256 mismatch (file altered or corrupted) (scripted)")
            if (verified.name, verified.version) != (ref.name, ref.version):
                raise AgentError(f"bundle is {verified.name}@{verified.version}, but the desired state announced "
                                 f"{ref.name}@{ref.version}")
            self._event("ota.verify", f"{ref.name}@{ref.version} verified", rollout_id=d.rollout_id)

            step = "loading"
            self._set_state(step)
            self._set_state("checking")
            step = "checking"
            await asyncio.sleep(step_s)
            golden = self._golden_check(beh.golden == "pass")
            self._event("ota.check", f"golden check passed ({golden.accuracy=}, {golden.max_abs_error=})",
                        rollout_id=d.rollout_id, accuracy=golden.accuracy, max_abs_error=golden.max_abs_error)
        except TransientDownloadError as exc:
            reason = f"{step} failed: {exc}"
            self._event("ota.download_failed", reason, level="warning", rollout_id=d.rollout_id,
                        error=type(exc).__name__)
            self._set_state("failed" if self.active is None else "rolled_back", error=reason)
            self._retry_delay = min(300.0, max(self.script.ota.retry_min_s, self._retry_delay * 2))
            self._event("ota.retry", f"download will be retried in {self._retry_delay:.3g} s", level="warning",
                        rollout_id=d.rollout_id, retry_in_s=self._retry_delay)
            self._handled = None
            self._retry = asyncio.get_running_loop().create_task(self._retry_after(d, self._retry_delay))
            return
        except EdgekitError as exc:
            reason = f"{step} failed: {exc}"
            if d.bundle.sha256 not in self.failed:
                self.failed = [*self.failed, d.bundle.sha256][-32:]
            self._event("ota.failed", reason, level="error", rollout_id=d.rollout_id, step=step,
                        error=type(exc).__name__)
            if self.active is not None:
                self._event("ota.rollback", f"kept serving {self.active.ref.name}@{self.active.ref.version}",
                            level="warning", rollout_id=d.rollout_id)
                self._set_state("rolled_back", error=reason)
            else:
                self._set_state("failed", error=reason)
            return

        self._retry_delay = 0.0
        prev = self.active
        self.previous, self.active = prev, Slot(ref=ref, sha256=d.bundle.sha256, name=slot)
        self.rollout_id, self.generation = d.rollout_id, d.generation
        self.golden, self.last_error = golden, None
        self._event("ota.switch", f"now serving {ref.name}@{ref.version} from slot {slot}", rollout_id=d.rollout_id,
                    previous=f"{prev.ref.name}@{prev.ref.version}" if prev else None)
        soak_s = self.script.ota.soak_s
        if soak_s > 0:
            self.soaking = True
            self._set_state("soaking")
            self._soak = asyncio.get_running_loop().create_task(self._end_soak_after(soak_s))
        else:
            self._set_state("installed")
            self._event("ota.installed", f"{ref.name}@{ref.version} installed", rollout_id=d.rollout_id)

    async def _retry_after(self, d: Desired, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._pending is None:
            self.retries += 1
            self._pending = d
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._work())

    def _golden_check(self, scripted_pass: bool) -> GoldenResult:
        """Load the fake runtime, run a warm-up batch through it, then apply the scripted outcome."""
        with FakeRuntime().load(None) as session:
            outs = session.run(synthetic_feeds(session.inputs, batch=4, seed=0))
        if not all(np.isfinite(v).all() for v in outs.values()):
            raise HealthCheckError("fake runtime produced non-finite outputs")
        if not scripted_pass:
            raise HealthCheckError("golden check failed: accuracy 0.41 below 0.95 (scripted)")
        return GoldenResult(passed=True, accuracy=1.0, max_abs_error=0.0)

    async def _end_soak_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.soaking or self.active is None:
            return
        beh = self.script.behaviour(self.device_id, self.active.ref)
        self.soaking = False
        if beh.soak == "fail":
            bad, self.active, self.previous = self.active, self.previous, None
            if bad.sha256 not in self.failed:
                self.failed = [*self.failed, bad.sha256][-32:]
            target = f"{self.active.ref.name}@{self.active.ref.version}" if self.active else "nothing (no previous slot)"
            reason = "end-of-soak check failed: error rate over budget (scripted)"
            self._event("ota.rollback", f"{reason}; rolled back to {target}", level="error",
                        rollout_id=self.rollout_id, failed=f"{bad.ref.name}@{bad.ref.version}")
            self._set_state("rolled_back", error=reason)
            return
        self._event("ota.installed", f"{self.active.ref.name}@{self.active.ref.version} marked good after the soak "
                    "window", rollout_id=self.rollout_id)
        self._set_state("installed")

    async def close(self) -> None:
        for t in (self._worker, self._soak, self._retry):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

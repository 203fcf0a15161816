"""Over-the-air updates with A/B slots and automatic rollback.

Sequence for a desired bundle (each step is an event and a ``reported`` state)::

    accepted → downloading (inactive slot, streamed, size-limited, sha256 = announced)
             → verifying (every hash + the signature against the trusted keys; name/version = announced)
             → loading (the profile's runtime) → checking (warm-up + golden set within tolerance)
             → switch (pointer file replaced atomically; requests keep flowing) → soaking → installed

A failure before the switch leaves the served model untouched (``rolled_back``: the device stays on,
or returns to, the previous bundle). After the switch, a failed end-of-soak check or a crash loop
(``boots_in_soak`` over ``max_boot_attempts``) rolls back to the previous slot. Bundles that failed
are remembered by sha256 and not retried. Malformed or unauthorised desired states are rejected with
a ``desired.rejected`` event and change nothing else.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bundle import VerifiedBundle, file_sha256
from edgekit.errors import AgentError, EdgekitError, HealthCheckError, WireError
from edgekit.profiles import DeviceProfile
from edgekit.signing import PublicKey
from edgekit.wire import Desired, GoldenResult, ModelRef, Reported, decode
from runtimes import Runtime, runtime_for_profile

from .config import OtaConfig
from .download import Downloader, DownloadError, redact_url
from .health import golden_check, warm_up
from .host import LoadedModel, ModelHost
from .slots import SlotName, SlotPointer, SlotRecord, SlotStore

__all__ = ["OtaHooks", "OtaManager", "load_verified"]

log = logging.getLogger("edgekit.agent.ota")


def _noop(*_: Any, **__: Any) -> None:
    return None


@dataclass
class OtaHooks:
    """Where the OTA manager reports to (events, ``reported``, model and state changes)."""

    event: Callable[..., None] = _noop  # event(kind, message, level=..., data=..., rollout_id=...)
    reported: Callable[[Reported], None] = _noop
    model_changed: Callable[[LoadedModel | None], None] = _noop
    state_changed: Callable[[str], None] = _noop


def load_verified(vb: VerifiedBundle, runtime: Runtime, profile: DeviceProfile | None, *, threads: int | None,
                  slot: SlotName | None, sha256: str | None,
                  engine_cache: Path | None = None) -> tuple[LoadedModel, GoldenResult]:
    """Load a verified bundle, check its specs, warm it up and run the golden check.

    ``engine_cache`` (under the state directory) is handed to runtimes that build device-specific
    engines (TensorRT); portable runtimes need none.
    """
    extra: dict[str, Any] = {"cache_dir": engine_cache} if engine_cache and runtime.name == "tensorrt" else {}
    try:
        session = runtime.load(vb.model_path, profile, threads=threads, **extra)
    except EdgekitError as exc:
        raise HealthCheckError(f"cannot load the model: {exc}") from exc
    try:
        got = {(s.name, s.dtype) for s in session.inputs}
        want = {(s.name, s.dtype) for s in vb.manifest.inputs}
        if got != want:
            raise HealthCheckError(f"the model's inputs {sorted(got)} disagree with the manifest's {sorted(want)}")
        golden = vb.golden()
        warm_up(session, golden, vb.manifest)
        result = golden_check(session, vb.manifest, golden)
    except BaseException:
        session.close()
        raise
    return LoadedModel(vb.manifest, session, slot=slot, sha256=sha256, runtime=runtime.name), result


class OtaManager:
    """Owns the slots: boots from them, installs desired bundles, soaks and rolls back."""

    def __init__(
        self,
        cfg: OtaConfig,
        slots: SlotStore,
        host: ModelHost,
        *,
        profile: DeviceProfile | None,
        trusted: list[PublicKey],
        device_id: str | None = None,
        threads: int | None = None,
        runtime: Runtime | None = None,
        hooks: OtaHooks | None = None,
        engine_cache: Path | None = None,
    ):
        self.engine_cache = engine_cache
        self.cfg = cfg
        self.slots = slots
        self.host = host
        self.profile = profile
        self.trusted = trusted
        self.device_id = device_id
        self.threads = threads
        self._runtime = runtime
        self.hooks = hooks or OtaHooks()
        self.downloader = Downloader(max_bytes=cfg.max_bundle_bytes, timeout_s=cfg.download_timeout_s,
                                     headers=dict(cfg.headers), ca_file=cfg.ca_file, client_cert=cfg.client_cert,
                                     client_key=cfg.client_key)
        self.state = "idle"
        self.last_error: str | None = None
        self.golden: GoldenResult | None = None
        self._lock = threading.RLock()
        self._pending: Desired | None = None
        self._handled: tuple[str, int] | None = None
        # a download that failed for a transient reason is retried with backoff (never blacklisted)
        self._retry: Desired | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._last_failure_transient = False
        # (rollout_id, generation) of the last desired state acted upon when it did not end installed;
        # reported so the fleet sees its request answered (installed ones are persisted in the pointer)
        self._answered: tuple[str | None, int] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._soak_timer: threading.Timer | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            if self.profile is None:
                raise AgentError("no device profile: cannot choose a runtime")
            self._runtime = runtime_for_profile(self.profile)
        return self._runtime

    # -- reporting -------------------------------------------------------------------------------
    def reported(self, ptr: SlotPointer | None = None) -> Reported:
        ptr = ptr or self._read_pointer()

        def ref(r: SlotRecord | None) -> ModelRef | None:
            return ModelRef(name=r.name, version=r.version) if r else None

        rollout_id, generation = self._answered or (ptr.rollout_id, ptr.generation)
        return Reported(
            device_id=self.device_id or "local", active=ref(ptr.active), previous=ref(ptr.previous),
            ota_state=self.state, rollout_id=rollout_id, generation=generation,
            golden=self.golden, last_error=self.last_error,
        )

    def _set_state(self, state: str, ptr: SlotPointer | None = None, *, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.last_error = error
        self.hooks.state_changed(state)
        try:
            self.hooks.reported(self.reported(ptr))
        except Exception:  # noqa: BLE001 - reporting must not break the OTA sequence
            log.exception("reporting failed")

    def _event(self, kind: str, message: str, level: str = "info", rollout_id: str | None = None, **data: Any) -> None:
        try:
            self.hooks.event(kind, message, level=level, data=data, rollout_id=rollout_id)
        except Exception:  # noqa: BLE001
            log.exception("event hook failed")

    def _read_pointer(self) -> SlotPointer:
        try:
            return self.slots.read()
        except AgentError as exc:
            self._event("state.corrupt", f"{exc}; starting from empty slots", level="error")
            return SlotPointer()

    # -- boot ------------------------------------------------------------------------------------
    def boot(self, seed: Path | None = None) -> LoadedModel | None:
        """Start-up: crash-loop check, load the active slot (or roll back), install ``seed`` if new."""
        with self._lock:
            ptr = self._read_pointer()
            if ptr.soaking and ptr.active is not None:
                ptr.boots_in_soak += 1
                self.slots.write(ptr)
                if ptr.boots_in_soak > self.cfg.max_boot_attempts:
                    ptr = self._rollback(ptr, f"crash loop: {ptr.boots_in_soak} boots during the soak window "
                                              f"of {ptr.active.name}@{ptr.active.version}")
            model = None
            while ptr.active is not None and model is None:
                try:
                    model = self._load_slot(ptr.active)
                except EdgekitError as exc:
                    ptr = self._rollback(ptr, f"active slot {ptr.active.slot} failed at boot: {exc}")
            if model is not None:
                self._serve(model)
                self._event("agent.boot", f"serving {model.manifest.ref} from slot {model.slot}",
                            slot=model.slot, boots_in_soak=ptr.boots_in_soak)
            if seed is not None:
                sha = file_sha256(seed)
                if sha in ptr.failed and ptr.active is not None:
                    self._event("ota.skipped", f"seed bundle {seed.name} failed its checks here before; not retried",
                                level="warning")
                elif ptr.active is None or (sha != ptr.seed_sha256 and sha != ptr.active.sha256):
                    self._install_local(seed, sha)
                    ptr = self._read_pointer()
            if ptr.soaking and ptr.active is not None and self.host.current is not None:
                remaining = max(0.0, (ptr.soak_started or time.time()) + self.cfg.soak_s - time.time())
                self._set_state("soaking", ptr)
                self._start_soak(max(remaining, min(self.cfg.soak_s, 1.0)))
            else:
                self._set_state(self.state, ptr)
            return self.host.current

    def _load_slot(self, rec: SlotRecord) -> LoadedModel:
        vb = self.slots.extract(rec.slot, self.trusted, max_bytes=self.cfg.max_bundle_bytes)
        if vb.manifest.name != rec.name or vb.manifest.version != rec.version:
            raise AgentError(f"slot {rec.slot} holds {vb.manifest.ref}, pointer says {rec.name}@{rec.version}")
        model, self.golden = load_verified(vb, self.runtime, self.profile, threads=self.threads,
                                           slot=rec.slot, sha256=rec.sha256, engine_cache=self.engine_cache)
        return model

    def _serve(self, model: LoadedModel | None) -> None:
        self.host.swap(model)
        self.hooks.model_changed(model)

    def _rollback(self, ptr: SlotPointer, reason: str) -> SlotPointer:
        """Make ``previous`` active again (or nothing), remember the failed bundle, persist."""
        bad = ptr.active
        failed = list(ptr.failed)
        if bad is not None and bad.sha256 not in failed:
            failed.append(bad.sha256)
        new = SlotPointer(active=ptr.previous, previous=None, soaking=False, boots_in_soak=0,
                          rollout_id=ptr.rollout_id, generation=ptr.generation, failed=failed[-32:],
                          seed_sha256=ptr.seed_sha256)
        self.slots.write(new)
        target = f"{new.active.name}@{new.active.version}" if new.active else "nothing (no previous slot)"
        self._event("ota.rollback", f"{reason}; rolled back to {target}", level="error",
                    rollout_id=ptr.rollout_id, failed=f"{bad.name}@{bad.version}" if bad else None)
        self._set_state("rolled_back", new, error=reason)
        return new

    # -- desired state ---------------------------------------------------------------------------
    def handle_desired(self, raw: bytes) -> None:
        """Validate a ``desired`` payload; reject with an event, or queue it for the worker."""
        if not raw:
            return  # a cleared retained message: nothing is desired
        try:
            d = decode("desired", raw, Desired)
        except WireError as exc:
            self._event("desired.rejected", f"malformed desired state: {exc}", level="warning")
            return
        problem = self._authorise(d)
        if problem:
            self._event("desired.rejected", problem, level="warning", rollout_id=d.rollout_id)
            return
        with self._lock:
            self._pending = d
            self._retry = None
        self._wake.set()

    def _authorise(self, d: Desired) -> str | None:
        if self.device_id is not None and d.device_id != self.device_id:
            return f"desired state addressed to device {d.device_id!r} arrived at {self.device_id!r}"
        url = d.bundle.url
        if not url.startswith(("http://", "https://")):
            return f"bundle URL {redact_url(url)!r} is not http(s)"
        if self.cfg.allowed_url_prefixes and not url.startswith(tuple(self.cfg.allowed_url_prefixes)):
            return f"bundle URL {redact_url(url)!r} is not under an allowed prefix (unauthorised source)"
        if d.bundle.size > self.cfg.max_bundle_bytes:
            return f"bundle of {d.bundle.size} bytes is over this device's {self.cfg.max_bundle_bytes}-byte limit"
        return None

    def start(self) -> OtaManager:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edgekit-ota", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._soak_timer:
            self._soak_timer.cancel()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            with self._lock:
                d, self._pending = self._pending, None
                if d is None and self._retry is not None and time.monotonic() >= self._retry_at:
                    d, self._retry, self._handled = self._retry, None, None
            if d is None or self._stop.is_set():
                continue
            try:
                self.converge(d)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any failure
                log.exception("OTA failed unexpectedly")
                self._event("ota.failed", f"unexpected error: {type(exc).__name__}: {exc}", level="error")

    def converge(self, d: Desired) -> None:
        """Install ``d`` unless it is what runs already or it failed here before."""
        if d.action == "rollback":
            self._fleet_rollback(d)
            return
        with self._lock:
            ptr = self._read_pointer()
            key = (d.bundle.sha256, d.generation)
            if ptr.active is not None and ptr.active.sha256 == d.bundle.sha256:
                self._answered = None
                if ptr.generation != d.generation or ptr.rollout_id != d.rollout_id:
                    ptr.generation, ptr.rollout_id = d.generation, d.rollout_id
                    self.slots.write(ptr)
                if self._handled != key:
                    self._handled = key
                    self._set_state(self.state if self.state == "soaking" else "installed", ptr)
                return
            if d.bundle.sha256 in ptr.failed:
                if self._handled != key:
                    self._handled = key
                    self._answered = (d.rollout_id, d.generation)
                    self._event("ota.skipped", f"{d.bundle.name}@{d.bundle.version} failed its checks here before; "
                                "not retried", level="warning", rollout_id=d.rollout_id)
                    self._set_state("failed", ptr)
                return
            self._handled = key
            self._install(d)

    def _fleet_rollback(self, d: Desired) -> None:
        """The fleet undoes a wave: leave ``d.bundle`` for the previous slot (once per generation)."""
        with self._lock:
            ptr = self._read_pointer()
            key = ("rollback", d.bundle.sha256, d.generation)
            if self._handled == key:
                return
            self._handled, self._answered = key, (d.rollout_id, d.generation)
            ref = f"{d.bundle.name}@{d.bundle.version}"
            if ptr.active is None or ptr.active.sha256 != d.bundle.sha256:
                ptr.generation, ptr.rollout_id = d.generation, d.rollout_id
                self.slots.write(ptr)
                self._set_state(self.state, ptr)
                return
            if ptr.previous is None:
                self._event("ota.rollback_refused", f"the fleet asked to roll back {ref}, but there is no previous "
                            "slot to return to; still serving it", level="error", rollout_id=d.rollout_id)
                self._set_state("failed", ptr, error=f"no previous slot to roll {ref} back to")
                return
            new = self._rollback(ptr, f"the fleet rolled back {ref} (rollout {d.rollout_id})")
            new.generation, new.rollout_id = d.generation, d.rollout_id
            self.slots.write(new)
            model = None
            if new.active is not None:
                try:
                    model = self._load_slot(new.active)
                except EdgekitError as exc:
                    new = self._rollback(new, f"previous slot failed to load: {exc}")
            self._serve(model)
            self._set_state("rolled_back", new)

    def _install_local(self, path: Path, sha: str) -> None:
        ptr = self._read_pointer()
        slot = self.slots.inactive(ptr)

        def fetch(dest: Path) -> None:
            shutil.copyfile(path, dest)
            if file_sha256(dest) != sha:
                raise AgentError(f"{path} changed while it was copied")

        ok = self._pipeline(fetch, slot, name=None, version=None, sha=sha, rollout_id=None, generation=ptr.generation,
                            source=str(path))
        if ok:
            p = self._read_pointer()
            p.seed_sha256 = sha
            self.slots.write(p)
        elif self.host.current is None:
            raise AgentError(f"cannot serve {path}: {self.last_error}")

    def _install(self, d: Desired) -> bool:
        slot = self.slots.inactive(self._read_pointer())
        self._event("ota.accepted", f"installing {d.bundle.name}@{d.bundle.version} into slot {slot}",
                    rollout_id=d.rollout_id, url=redact_url(d.bundle.url), generation=d.generation)

        def fetch(dest: Path) -> None:
            self.downloader.fetch(d.bundle.url, dest, sha256=d.bundle.sha256, size=d.bundle.size)

        ok = self._pipeline(fetch, slot, name=d.bundle.name, version=d.bundle.version, sha=d.bundle.sha256,
                            rollout_id=d.rollout_id, generation=d.generation, source=redact_url(d.bundle.url))
        with self._lock:
            if ok:
                self._retry_delay = 0.0
            elif self._last_failure_transient and self._pending is None:
                self._retry_delay = min(300.0, max(self.cfg.retry_min_s, self._retry_delay * 2))
                self._retry, self._retry_at = d, time.monotonic() + self._retry_delay
                self._event("ota.retry", f"download will be retried in {self._retry_delay:.0f} s",
                            level="warning", rollout_id=d.rollout_id, retry_in_s=self._retry_delay)
        return ok

    def _pipeline(self, fetch: Callable[[Path], None], slot: SlotName, *, name: str | None, version: str | None,
                  sha: str, rollout_id: str | None, generation: int, source: str) -> bool:
        step = "downloading"
        model: LoadedModel | None = None
        self._last_failure_transient = False
        try:
            self._set_state("downloading")
            self._event("ota.download", f"fetching {source}", rollout_id=rollout_id, slot=slot)
            with self._lock:  # the slot about to be overwritten can no longer be a fallback
                ptr = self._read_pointer()
                if ptr.previous is not None and ptr.previous.slot == slot:
                    ptr.previous = None
                    self.slots.write(ptr)
            self.slots.clear(slot)
            fetch(self.slots.bundle_path(slot))

            step = "verifying"
            self._set_state(step)
            vb = self.slots.extract(slot, self.trusted, max_bytes=self.cfg.max_bundle_bytes)
            if name is not None and (vb.manifest.name, vb.manifest.version) != (name, version):
                raise AgentError(f"bundle is {vb.manifest.ref}, but the desired state announced {name}@{version}")
            self._event("ota.verify", f"{vb.manifest.ref} verified (signed by {vb.key_id})", rollout_id=rollout_id,
                        key_id=vb.key_id)

            step = "loading"
            self._set_state(step)
            self._set_state("checking")
            step = "checking"
            model, golden = load_verified(vb, self.runtime, self.profile, threads=self.threads, slot=slot, sha256=sha,
                                          engine_cache=self.engine_cache)
            self._event("ota.check", f"golden check passed ({golden.accuracy=}, {golden.max_abs_error=})",
                        rollout_id=rollout_id, accuracy=golden.accuracy, max_abs_error=golden.max_abs_error)
        except (EdgekitError, OSError) as exc:
            if model is not None:
                model.session.close()
            reason = f"{step} failed: {exc}"
            # A download can fail for passing reasons (network, server): retried later. A bundle that
            # arrived and failed verification or its checks is remembered and never retried.
            self._last_failure_transient = isinstance(exc, DownloadError) and exc.transient
            if self._last_failure_transient:
                self._event("ota.download_failed", reason, level="warning", rollout_id=rollout_id,
                            error=type(exc).__name__, http_status=getattr(exc, "http_status", None))
                self.slots.clear(slot)
                self._set_state("failed" if self.host.current is None else "rolled_back", error=reason)
                return False
            self._answered = (rollout_id, generation)
            with self._lock:
                ptr = self._read_pointer()
                if sha not in ptr.failed:
                    ptr.failed = [*ptr.failed, sha][-32:]
                self.slots.write(ptr)
            self.slots.clear(slot)
            self._event("ota.failed", reason, level="error", rollout_id=rollout_id, step=step,
                        error=type(exc).__name__)
            if self.host.current is not None:
                self._event("ota.rollback", f"kept serving {self.host.current.manifest.ref}", level="warning",
                            rollout_id=rollout_id)
                self._set_state("rolled_back", error=reason)
            else:
                self._set_state("failed", error=reason)
            return False

        # The switch: one atomic pointer replacement, then the in-memory swap.
        with self._lock:
            ptr = self._read_pointer()
            new = SlotPointer(
                active=SlotRecord(slot=slot, name=model.name, version=model.version, sha256=sha),
                previous=ptr.active, soaking=self.cfg.soak_s > 0, soak_started=time.time(), boots_in_soak=0,
                rollout_id=rollout_id, generation=generation, failed=ptr.failed, seed_sha256=ptr.seed_sha256,
            )
            self.slots.write(new)
            self.golden = golden
            self.last_error = None
            self._answered = None
            self._serve(model)
        self._event("ota.switch", f"now serving {model.manifest.ref} from slot {slot}", rollout_id=rollout_id,
                    previous=f"{ptr.active.name}@{ptr.active.version}" if ptr.active else None)
        if self.cfg.soak_s > 0:
            self._set_state("soaking", new)
            self._start_soak(self.cfg.soak_s)
        else:
            self._set_state("installed", new)
            self._event("ota.installed", f"{model.manifest.ref} installed", rollout_id=rollout_id)
        return True

    # -- soak ------------------------------------------------------------------------------------
    def _start_soak(self, seconds: float) -> None:
        if self._soak_timer:
            self._soak_timer.cancel()
        self._soak_timer = threading.Timer(seconds, self._end_soak)
        self._soak_timer.daemon = True
        self._soak_timer.start()

    def _end_soak(self) -> None:
        with self._lock:
            ptr = self._read_pointer()
            if not ptr.soaking or ptr.active is None:
                return
            current = self.host.current
            try:
                if current is None or current.sha256 != ptr.active.sha256:
                    raise HealthCheckError("the soaking model is not the one being served")
                vb_golden = self._golden_of(ptr.active.slot)
                with self.host.lease() as m:
                    self.golden = golden_check(m.session, m.manifest, vb_golden)
            except EdgekitError as exc:
                new = self._rollback(ptr, f"end-of-soak check failed: {exc}")
                model = None
                if new.active is not None:
                    try:
                        model = self._load_slot(new.active)
                    except EdgekitError as exc2:
                        new = self._rollback(new, f"previous slot failed to load: {exc2}")
                self._serve(model)
                return
            ptr.soaking, ptr.boots_in_soak = False, 0
            self.slots.write(ptr)
            self._event("ota.installed", f"{ptr.active.name}@{ptr.active.version} marked good after the soak window",
                        rollout_id=ptr.rollout_id)
            self._set_state("installed", ptr)

    def _golden_of(self, slot: SlotName):
        from edgekit.bundle import load_golden

        p = self.slots.slot_dir(slot) / "files" / "golden.npz"
        return load_golden(p) if p.is_file() else None

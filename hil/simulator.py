"""``edgekit hil simulate``: N simulated device agents in one process, on one asyncio loop.

Each :class:`~hil.simdevice.SimDevice` is a paho client driven through paho's external-loop API
(:mod:`hil.mqttio`), so a thousand devices cost a thousand sockets, not a thousand threads. Devices
publish telemetry every ``telemetry_interval_s`` (staggered evenly over the interval so the broker sees
a steady rate), follow their retained ``desired`` state through the OTA state machine of
:mod:`hil.simota`, and behave as the script (:mod:`hil.simscript`) says.

Use :meth:`Simulator.run` from asyncio code, :class:`SimulatorThread` from tests (start, interact with
the broker or the fleet, stop), or the CLI. The :class:`SimReport` at the end counts what was sent,
acknowledged, still unacknowledged and evicted, so a caller can check loss against a subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.bundle import verify_bundle
from edgekit.errors import AgentError, ConfigError, EdgekitError
from edgekit.signing import load_public_keys
from edgekit.wire import Desired, ModelRef, valid_device_id
from hil.mqttio import LoopedClients
from hil.simdevice import SimDevice
from hil.simota import TransientDownloadError
from hil.simscript import SimScript

__all__ = ["HttpBundleSource", "SimConfig", "SimReport", "Simulator", "SimulatorThread", "broker_address"]

T = TypeVar("T")


def broker_address(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` → ``(host, port)``; anything else is a :class:`ConfigError`."""
    parts = urlsplit(url)
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ConfigError(f"--broker {url!r}: invalid port") from exc
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(f"--broker {url!r}: use mqtt://host:port (the simulator speaks plain MQTT)")
    return parts.hostname, port


class SimConfig(BaseModel):
    """Everything a simulation needs besides the script."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str
    devices: int = Field(default=10, ge=1, le=100_000)
    prefix: str = "sim"
    telemetry_interval_s: float = Field(default=1.0, gt=0, le=86_400)
    fleet_url: str | None = None
    trusted_keys: list[Path] = Field(default_factory=list)
    #: fetch and verify each announced bundle over HTTP (once for the fleet), or trust the announcement
    download: Literal["fetch", "simulate"] = "fetch"
    #: HTTP headers for bundle downloads (e.g. ``Authorization: Bearer …`` when the fleet's downloads need a token)
    download_headers: dict[str, str] = Field(default_factory=dict)
    max_spool: int = Field(default=10_000, ge=1)
    max_inflight: int = Field(default=20, ge=1, le=65_535)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    profile: str | None = None
    #: on stop, wait this long for spooled and in-flight messages to be acknowledged
    drain_s: float = Field(default=10.0, ge=0)
    #: devices connected per reconnect round (a connect storm is spread over rounds)
    connect_batch: int = Field(default=100, ge=1)
    #: remember when the broker acknowledged each seq (chaos tests: was a lost message acknowledged?)
    track_acks: bool = False
    seed: int = 0

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        broker_address(v)
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not valid_device_id(f"{v}-0"):
            raise ValueError(f"prefix {v!r} does not make valid device ids (letters, digits, '.', '_', '-')")
        return v

    def device_ids(self) -> list[str]:
        width = max(5, len(str(self.devices - 1)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(self.devices)]


class SimReport(BaseModel):
    """What a simulation did. ``unacked`` = spooled + in flight at the end (not lost: never acknowledged)."""

    devices: int
    duration_s: float
    connected: int
    connects: int
    telemetry_sent: int
    events_sent: int
    acked: int
    unacked: int
    evicted: int
    ota_states: dict[str, int]
    models: dict[str, int]
    #: per device: highest seq allocated (telemetry and events share it)
    last_seq: dict[str, int] = Field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        return self.model_dump(exclude={"last_seq"})


class HttpBundleSource:
    """Downloads each announced bundle once (shared by every device) and verifies it like the agent does."""

    def __init__(self, trusted_keys: list[Path], *, timeout_s: float = 60.0, headers: dict[str, str] | None = None):
        self.trusted = load_public_keys(trusted_keys) if trusted_keys else None
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._cache: dict[str, asyncio.Future[ModelRef]] = {}
        self.fetches = 0

    async def check(self, desired: Desired) -> ModelRef:
        sha = desired.bundle.sha256
        fut = self._cache.get(sha)
        if fut is None:
            fut = asyncio.get_running_loop().create_task(self._fetch(desired))
            self._cache[sha] = fut
        try:
            return await asyncio.shield(fut)
        except TransientDownloadError:
            if self._cache.get(sha) is fut:
                del self._cache[sha]  # a passing failure: the next attempt fetches again
            raise

    async def _fetch(self, d: Desired) -> ModelRef:
        import httpx

        self.fetches += 1
        with tempfile.TemporaryDirectory(prefix="edgekit-sim-") as tmp:
            path = Path(tmp) / "bundle.ekb"
            h, size = hashlib.sha256(), 0
            try:
                async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client, \
                        client.stream("GET", d.bundle.url) as resp:
                    if resp.status_code != 200:  # any status is worth a retry, as in the agent
                        raise TransientDownloadError(f"download of {d.bundle.url} answered HTTP {resp.status_code}")
                    with open(path, "wb") as fh:
                        async for chunk in resp.aiter_bytes():
                            size += len(chunk)
                            if size > d.bundle.size:
                                raise AgentError(f"{d.bundle.url} is larger than the announced {d.bundle.size} bytes")
                            h.update(chunk)
                            fh.write(chunk)
            except httpx.HTTPError as exc:
                raise TransientDownloadError(f"cannot download {d.bundle.url}: {exc}") from exc
            if size != d.bundle.size:
                raise TransientDownloadError(f"download of {d.bundle.url} ended after {size} of {d.bundle.size} bytes")
            if h.hexdigest() != d.bundle.sha256:
                raise AgentError(f"{d.bundle.url}: sha256 differs from the announced one (corrupted in transit?)")
            vb = await asyncio.to_thread(verify_bundle, path, self.trusted, Path(tmp) / "x",
                                         require_signature=self.trusted is not None)
            return ModelRef(name=vb.manifest.name, version=vb.manifest.version)


class Simulator:
    """N simulated devices sharing one asyncio loop."""

    def __init__(self, cfg: SimConfig, script: SimScript | None = None):
        self.cfg = cfg
        self.script = script or SimScript()
        self.devices: list[SimDevice] = []
        self.loops: LoopedClients | None = None
        self.source = (HttpBundleSource(cfg.trusted_keys, headers=cfg.download_headers)
                       if cfg.download == "fetch" else None)
        self._started = 0.0

    def _build(self) -> None:
        host, port = broker_address(self.cfg.broker_url)
        self.loops = LoopedClients(host, port, keepalive=self.cfg.keepalive_s, reconnect_batch=self.cfg.connect_batch)
        prefixes = (self.cfg.fleet_url.rstrip("/") + "/",) if self.cfg.fleet_url else ()
        self.devices = [
            SimDevice(dev_id, i, script=self.script, loops=self.loops, interval_s=self.cfg.telemetry_interval_s,
                      max_spool=self.cfg.max_spool, max_inflight=self.cfg.max_inflight, profile=self.cfg.profile,
                      source=self.source, allowed_url_prefixes=prefixes, seed=self.cfg.seed,
                      track_acks=self.cfg.track_acks)
            for i, dev_id in enumerate(self.cfg.device_ids())
        ]

    async def _telemetry_loop(self, dev: SimDevice, t0: float) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.telemetry_interval_s
        next_t = t0 + interval * (dev.index / len(self.devices)) + interval
        while True:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            dev.emit_telemetry()
            next_t += interval

    async def run(self, duration_s: float | None = None, stop: asyncio.Event | None = None,
                  on_progress: Callable[[SimReport], None] | None = None, progress_every_s: float = 10.0) -> SimReport:
        """Run until ``duration_s`` passes or ``stop`` is set; then drain and disconnect cleanly.

        The broker must accept connections at the start (a clear :class:`ConfigError` otherwise); later
        outages are what devices ride out with their spools."""
        host, port = broker_address(self.cfg.broker_url)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConfigError(f"cannot reach the MQTT broker at {host}:{port}: {exc or 'timed out'}") from exc
        writer.close()
        self._build()
        assert self.loops is not None
        self.loops.start()
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        t0 = loop.time()
        tasks = [loop.create_task(self._telemetry_loop(d, t0)) for d in self.devices]
        stop = stop or asyncio.Event()
        deadline = None if duration_s is None else t0 + duration_s
        try:
            while not stop.is_set() and (deadline is None or loop.time() < deadline):
                wait = progress_every_s if deadline is None else min(progress_every_s, deadline - loop.time())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.0))
                if on_progress is not None:
                    on_progress(self.report())
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drain()
            for d in self.devices:
                await d.ota.close()
            report = self.report()
            await self.loops.stop(on_each=lambda c: None)
        return report

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.cfg.drain_s
        while loop.time() < end and any(d.unacked for d in self.devices):
            await asyncio.sleep(0.05)
        for d in self.devices:
            d.publish_offline()
        await asyncio.sleep(0.2)

    def report(self) -> SimReport:
        ds = self.devices
        return SimReport(
            devices=len(ds), duration_s=time.monotonic() - self._started if self._started else 0.0,
            connected=sum(d.connected for d in ds), connects=sum(d.connects for d in ds),
            telemetry_sent=sum(d.telemetry_sent for d in ds), events_sent=sum(d.events_sent for d in ds),
            acked=sum(d.acked for d in ds), unacked=sum(d.unacked for d in ds), evicted=sum(d.evicted for d in ds),
            ota_states=dict(Counter(d.ota.state for d in ds)),
            models=dict(Counter(f"{d.model.name}@{d.model.version}" if d.model else "none" for d in ds)),
            last_seq={d.device_id: d.seq for d in ds},
        )


class SimulatorThread:
    """Runs a :class:`Simulator` on its own thread and loop, for tests and benchmarks."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._result: SimReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="edgekit-sim", daemon=True)

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            self._result = await self.sim.run(stop=self._stop)

        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of stop()
            self._error = exc
            self._ready.set()

    def start(self) -> SimulatorThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the simulator's loop thread and return its result."""
        if self._loop is None:
            raise AgentError("simulator is not running")

        async def wrap() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(timeout)

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float = 30.0, poll_s: float = 0.1) -> bool:
        """Poll ``predicate(sim)`` on the loop thread until true or ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._error is not None:
                raise self._error
            if self.call(lambda: predicate(self.sim)):
                return True
            time.sleep(poll_s)
        return False

    def stop(self, timeout: float = 60.0) -> SimReport:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise AgentError("simulator did not stop in time")
        return self._result

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(EdgekitError):
                self.stop()


def run_blocking(cfg: SimConfig, script: SimScript, duration_s: float | None,
                 on_progress: Callable[[SimReport], None] | None = None) -> SimReport:
    """Run in the foreground (the CLI); SIGINT/SIGTERM stop it cleanly, with the drain."""

    async def body() -> SimReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await Simulator(cfg, script).run(duration_s, stop, on_progress=on_progress)

    return asyncio.run(body())

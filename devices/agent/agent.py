"""The device agent: wires host, server, batcher, metrics, drift, spool, MQTT, OTA and systemd together.

One state directory holds everything the agent persists::

    STATE/slots/{a,b}/  STATE/slots.json   A/B model slots and the pointer (see slots.py)
    STATE/spool.sqlite                     store-and-forward telemetry/events and the seq counter
    STATE/keys/*.pub                       extra trusted keys (besides ota.trusted_keys)
    STATE/engines/                         runtime engine cache (TensorRT engines are built on device)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.errors import AgentError, ConfigError, EdgekitError
from edgekit.profiles import DeviceProfile, load_profile
from edgekit.signing import PublicKey, load_public_keys
from edgekit.wire import Event, ModelRef, Reported, Status
from runtimes import Runtime

from .batching import DynamicBatcher
from .certs import CertRenewer, finish_install
from .config import AgentConfig
from .drift import DriftMonitor
from .host import LoadedModel, ModelHost
from .metrics import AgentMetrics
from .mqtt import MqttLink
from .ota import OtaHooks, OtaManager
from .server import InferenceService, create_app
from .slots import SlotStore
from .spool import Spool
from .systemd import SdNotifier, Watchdog, watchdog_interval_s
from .telemetry import TelemetryBuilder

__all__ = ["Agent", "resolve_profile"]

log = logging.getLogger("edgekit.agent")


def resolve_profile(name: str | None) -> DeviceProfile:
    """The configured profile, or the one that fits this host."""
    if name:
        return load_profile(name)
    from edgekit.detect import detect_host

    info = detect_host()
    if not info.profile:
        raise ConfigError("no built-in device profile fits this host; set 'profile:' in the agent config")
    return load_profile(info.profile)


class Agent:
    """``start()`` / ``stop()`` for embedding and tests; ``run()`` blocks until SIGTERM/SIGINT."""

    def __init__(self, cfg: AgentConfig, *, runtime: Runtime | None = None, profile: DeviceProfile | None = None,
                 notifier: SdNotifier | None = None):
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir)
        try:
            for sub in ("keys", "engines"):
                (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state_dir {self.state_dir} is not usable: {exc}") from exc
        self.profile = profile or resolve_profile(cfg.profile)
        self.trusted = self._trusted_keys()
        self.host = ModelHost()
        self.metrics = AgentMetrics()
        self.drift = DriftMonitor()
        self.batcher: DynamicBatcher | None = None
        if cfg.batching.enabled:
            self.batcher = DynamicBatcher(self.host.run, max_batch=cfg.batching.max_batch,
                                          max_delay_ms=cfg.batching.max_delay_ms,
                                          on_batch=self.metrics.batch_size.observe)
        self.service = InferenceService(self.host, self.metrics, self.drift, self.batcher,
                                        max_body_bytes=cfg.server.max_body_bytes, on_error=self._inference_error)
        self._error_lock = threading.Lock()
        self._errors_suppressed = 0
        self._last_error_event = float("-inf")
        self.spool: Spool | None = None
        self.mqtt: MqttLink | None = None
        self.renewer: CertRenewer | None = None
        if cfg.mqtt.url:
            self.spool = Spool(self.state_dir / "spool.sqlite", cfg.spool.max_messages)
            self.renewer = self._cert_renewer(cfg)
            self.mqtt = MqttLink(cfg.mqtt, self.spool, birth=self._birth, on_desired=self._on_desired,
                                 on_cert=self.renewer.on_answer if self.renewer else None,
                                 on_connected=self.renewer.connected if self.renewer else None)
        self.ota = OtaManager(
            cfg.ota, SlotStore(self.state_dir), self.host, profile=self.profile, trusted=self.trusted,
            device_id=cfg.mqtt.device_id, runtime=runtime,
            # the profile's thread count, but never more than this host has (no oversubscription)
            threads=cfg.runtime_threads or min(self.profile.threads, os.cpu_count() or 1),
            engine_cache=self.state_dir / "engines",
            hooks=OtaHooks(event=self._event, reported=self._reported, model_changed=self._model_changed,
                           state_changed=self.metrics.set_ota_state),
        )
        self.notifier = notifier or SdNotifier()
        self.watchdog: Watchdog | None = None
        self.telemetry: TelemetryBuilder | None = None
        self._server = None
        self._server_thread: threading.Thread | None = None
        self._telemetry_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.port: int | None = None

    def _cert_renewer(self, cfg: AgentConfig) -> CertRenewer | None:
        """With an mTLS client certificate: renew it over MQTT (``certs.py``); first finish an install a
        crash interrupted, so the TLS context is built from a matching pair."""
        m = cfg.mqtt
        if not (m.url and m.url.startswith("mqtts://") and m.client_cert and m.client_key and m.ca_file):
            return None
        done = finish_install(Path(m.client_cert), Path(m.client_key))
        if done:
            log.warning("certificate renewal: %s", done)
        return CertRenewer(
            m.device_id or "", cert_file=m.client_cert, key_file=m.client_key, ca_file=m.ca_file,
            fraction=m.cert_renew_fraction, check_interval_s=m.cert_check_interval_s,
            send=lambda payload: self.mqtt is not None and self.mqtt.publish_csr(payload),
            event=self._event, on_installed=lambda: self.mqtt is not None and self.mqtt.reload_tls(),
        )

    def _trusted_keys(self) -> list[PublicKey]:
        keys = load_public_keys(list(self.cfg.ota.trusted_keys) + [self.state_dir / "keys"])
        if not keys:
            raise ConfigError(
                f"no trusted public key: set ota.trusted_keys (or --trusted-key) or put *.pub in {self.state_dir / 'keys'}"
            )
        return keys

    # -- hooks -----------------------------------------------------------------------------------
    def _birth(self) -> Status:
        m = self.host.current
        return Status(device_id=self.cfg.mqtt.device_id or "local", state="online", agent_version=__version__,
                      profile=self.profile.name, model=ModelRef(name=m.name, version=m.version) if m else None,
                      tags=list(self.cfg.mqtt.tags))

    def _event(self, kind: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None,
               rollout_id: str | None = None) -> None:
        getattr(log, "warning" if level == "warning" else ("error" if level == "error" else "info"))(
            "%s: %s", kind, message)
        if self.mqtt is not None:
            device = self.mqtt.device_id
            clean = {k: v for k, v in (data or {}).items() if v is None or isinstance(v, (str, int, float, bool))}
            self.mqtt.emit_event(lambda seq: Event(device_id=device, seq=seq, kind=kind, level=level, message=message,
                                                   rollout_id=rollout_id, data=clean))

    def _reported(self, rep: Reported) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_reported(rep)

    def _model_changed(self, model: LoadedModel | None) -> None:
        self.metrics.set_model(model.name if model else None, model.version if model else None)
        self.drift.reset(list(model.manifest.labels) if model and model.manifest.labels else None)
        if self.mqtt is not None and self.mqtt.connected.is_set():
            try:
                from edgekit.wire import encode, topic

                self.mqtt.client.publish(topic(self.mqtt.device_id, "status"), encode(self._birth()), qos=1,
                                         retain=True)
            except Exception:  # noqa: BLE001
                log.exception("status update failed")

    def _inference_error(self, message: str, min_interval_s: float = 60.0) -> None:
        """An ``inference.error`` event, at most one a minute (with how many were folded into it)."""
        with self._error_lock:
            now = time.monotonic()
            if now - self._last_error_event < min_interval_s:
                self._errors_suppressed += 1
                return
            folded, self._errors_suppressed, self._last_error_event = self._errors_suppressed, 0, now
        self._event("inference.error", message, level="error", data={"similar_errors_since_last_event": folded})

    def _on_desired(self, raw: bytes) -> None:
        self.ota.handle_desired(raw)

    # -- liveness --------------------------------------------------------------------------------
    def inference_alive(self) -> bool:
        """True when the server thread runs and, with a model loaded, a probe answers in time."""
        if self._server_thread is None or not self._server_thread.is_alive():
            return False
        model = self.host.current
        if model is None:
            return True  # nothing to serve yet (waiting for a desired bundle) is not a dead inference path
        feeds = {s.name: np.zeros(s.concrete(1), dtype=s.dtype) for s in model.inputs}
        if self.batcher is not None and model.batchable:
            self.batcher.submit(feeds).result(timeout=self.cfg.watchdog.probe_timeout_s)
        else:
            self.host.run(feeds)
        return True

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Agent:
        import uvicorn

        self.ota.boot(self.cfg.bundle)
        if self.batcher is not None:
            self.batcher.start()
        if self.mqtt is not None:
            self.mqtt.start()
            self.telemetry = TelemetryBuilder(
                self.mqtt.device_id, self.cfg.mqtt.telemetry_interval_s, self.host, self.metrics, self.drift,
                queue_depth=lambda: self.batcher.depth if self.batcher else 0,
                evicted=lambda: self.spool.evicted if self.spool else 0,
            )
            self._telemetry_thread = threading.Thread(target=self._telemetry_loop, name="edgekit-telemetry",
                                                      daemon=True)
            self._telemetry_thread.start()
            self.mqtt.publish_reported(self.ota.reported())
            if self.renewer is not None:
                self.renewer.start()
        self.ota.start()
        app = create_app(self.service)
        config = uvicorn.Config(app, host=self.cfg.server.host, port=self.cfg.server.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._server_thread = threading.Thread(target=self._server.run, name="edgekit-http", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AgentError(f"the HTTP server could not start on {self.cfg.server.host}:{self.cfg.server.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        model = self.host.current
        self.notifier.ready(f"serving {model.manifest.ref}" if model else "waiting for a model")
        interval = watchdog_interval_s()
        if interval:
            self.watchdog = Watchdog(self.notifier, self.inference_alive, interval).start()
        log.info("edgekit agent listening on %s:%s", self.cfg.server.host, self.port)
        return self

    def _telemetry_loop(self) -> None:
        assert self.telemetry is not None and self.mqtt is not None
        interval = self.cfg.mqtt.telemetry_interval_s
        next_at = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval
            try:
                values = self.telemetry.take()
                if self.spool is not None:
                    self.metrics.spool_depth.set(len(self.spool))
                    self.metrics.spool_evicted.set(self.spool.evicted)
                self.mqtt.emit_telemetry(lambda seq, v=values: self.telemetry.build(v, seq))
            except EdgekitError as exc:
                log.warning("telemetry: %s", exc)
            except Exception:  # noqa: BLE001 - telemetry must never stop for good
                log.exception("telemetry failed")

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(AgentError):
            self.notifier.stopping()
        if self.watchdog:
            self.watchdog.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._server_thread is not None:
            self._server_thread.join(timeout=10)
        self.ota.stop()
        if self.batcher is not None:
            self.batcher.stop()
        if self.renewer is not None:
            self.renewer.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        if self._telemetry_thread is not None:
            self._telemetry_thread.join(timeout=5)
        if self.spool is not None:
            self.spool.close()
        self.host.close()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            while not stop.wait(0.5):
                if self._server_thread is not None and not self._server_thread.is_alive():
                    raise AgentError("the HTTP server stopped unexpectedly")
        finally:
            self.stop()

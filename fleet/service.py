"""The running fleet manager: broker (if embedded), database, registry, ingest, rollout ticker, HTTP API.

:func:`build_context` wires the parts into a :class:`~fleet.context.FleetContext`;
:class:`FleetService` starts and stops the long-running ones (broker, ingest, ticker) around it, and
:func:`serve` adds the HTTP API (``fleet.api.create_app``) under uvicorn — that is ``edgekit fleet up``.
Every start migrates the database first. Nothing here runs at import.

Security modes (``FleetSettings.security``): ``insecure`` runs the plain trial broker (loudly labelled);
``mtls`` runs :class:`~fleet.security.secure_broker.SecureBroker` (mutual TLS, per-device ACL, CRL; the
fleet CA is created on the first secure start if ``edgekit fleet ca init`` was not run) and the fleet's
own clients present the fleet identity on its loopback listener; a
:class:`~fleet.security.renewal.CertificateIssuer` answers devices' certificate renewals over MQTT.
``edgekit fleet revoke`` reaches that
running broker through its pid file (SIGHUP), without a restart. In both modes, every desired state the
fleet publishes carries a fresh download token for its device (:mod:`fleet.security.download_token`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from urllib.parse import urlsplit

from edgekit.errors import FleetError
from edgekit.signing import PublicKey, load_public_keys
from fleet.artifacts import ArtifactStore
from fleet.broker import EmbeddedBroker
from fleet.context import FleetContext
from fleet.db.base import Database
from fleet.db.migrate import upgrade
from fleet.ingest import Ingest, IngestStats
from fleet.leases import acquire, release
from fleet.mqtt import DesiredPublisher, MqttDesiredPublisher
from fleet.registry import BundleRegistry
from fleet.rollouts.manager import RolloutManager
from fleet.security.broker_config import INSECURE_BANNER
from fleet.security.download_token import load_or_create_secret
from fleet.security.pki import FleetPKI
from fleet.security.renewal import CertificateIssuer
from fleet.security.secure_broker import SecureBroker
from fleet.settings import FleetSettings
from fleet.store import BatchResult, Message

__all__ = ["FleetService", "RolloutTicker", "build_context", "download_refused", "open_or_init_pki", "serve",
           "trusted_keys"]

log = logging.getLogger(__name__)


def trusted_keys(settings: FleetSettings) -> list[PublicKey]:
    """The configured keys plus every ``*.pub`` in ``{data_dir}/trusted-keys/``."""
    paths = list(settings.trusted_keys)
    extra = settings.data_dir / "trusted-keys"
    if extra.is_dir():
        paths.append(extra)
    return load_public_keys(paths)


def build_context(settings: FleetSettings, publisher: DesiredPublisher, *, database: Database | None = None,
                  stats: IngestStats | None = None) -> FleetContext:
    """Database (migrated), registry and rollout manager for ``settings``; no thread is started."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = database or Database(settings.database)
    upgrade(db)
    keys = trusted_keys(settings)
    artifacts = ArtifactStore(settings.artifacts, settings.artifact_store)
    registry = BundleRegistry(db, settings.artifacts, keys, settings.public_url or "", artifacts=artifacts)
    secret = load_or_create_secret(settings.pki_dir / "download-token.key")
    manager = RolloutManager(db, registry, publisher, download_secret=secret,
                             download_token_ttl_s=settings.download_token_ttl_s)
    return FleetContext(settings=settings, database=db, registry=registry, rollouts=manager,
                        publisher=publisher, ingest_stats=stats or IngestStats(), trusted_keys=keys)


def open_or_init_pki(settings: FleetSettings) -> FleetPKI:
    """The fleet CA in ``{data_dir}/pki``; created (with a loud log line) when none exists yet."""
    root = settings.pki_dir
    if (root / "ca.key").exists():
        return FleetPKI.open(root)
    loopback = ("127.0.0.1", "::1", "localhost")
    host = urlsplit(settings.public_url or "").hostname
    names = [host] if host and host not in loopback else []
    pki = FleetPKI.init(root, server_hostnames=names)
    log.warning("security: mtls: no fleet CA in %s, so one was created now (CA key mode 0600; broker "
                "certificate for 127.0.0.1, localhost%s). Provision devices with `edgekit fleet provision`; "
                "run `edgekit fleet ca init --hostname …` beforehand to choose the broker's host names",
                root, "".join(", " + n for n in names))
    return pki


#: a download the fleet refused (HTTP 403: expired or otherwise unusable token) as an agent reports it
_REFUSED_EVENTS = ("ota.download_failed", "ota.failed")


def download_refused(message: Message) -> bool:
    """Whether ``message`` is a device event saying the fleet refused its bundle download (403).

    Reads the event's structured ``data.http_status``; the message text is only a fallback for agents
    that predate it, so rewording the agent's error cannot silently stop token re-issue."""
    if message.kind != "events":
        return False
    ev = message.payload
    if getattr(ev, "kind", None) not in _REFUSED_EVENTS:
        return False
    status = (getattr(ev, "data", None) or {}).get("http_status")
    if status is not None:
        return status == 403
    return "HTTP 403" in (getattr(ev, "message", "") or "")  # agents older than the http_status field


class RolloutTicker:
    """Calls ``manager.tick()`` every ``interval`` seconds in a thread until stopped.

    With a ``holder`` name, a tick runs only while this replica holds the database lease ``rollouts``
    (renewed each tick, expiring after a few missed ticks), so several replicas may all run a ticker and
    exactly one of them advances rollouts at any time.
    """

    LEASE = "rollouts"

    def __init__(self, manager: RolloutManager, interval: float, *, holder: str | None = None):
        self.manager, self.interval, self.holder = manager, interval, holder
        self.leading = holder is None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """One tick if this replica may run it; returns whether it ran."""
        if self.holder is not None:
            leading = acquire(self.manager.database, self.LEASE, self.holder, ttl_s=max(5 * self.interval, 10.0))
            if leading != self.leading:
                log.info("rollout ticker: %s the lead", "took" if leading else "lost")
                self.leading = leading
            if not leading:
                return False
        self.manager.tick()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the ticker must survive anything one tick throws
                log.exception("rollout tick failed")
            self._stop.wait(self.interval)

    def start(self) -> RolloutTicker:
        self._thread = threading.Thread(target=self._run, name="fleet-rollout-ticker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self.holder is not None and self.leading:
            try:
                release(self.manager.database, self.LEASE, self.holder)
            except Exception:  # noqa: BLE001 - the lease expires by itself anyway
                log.warning("could not release the rollout lease; it expires by itself")


class FleetService:
    """Start/stop the fleet's long-running parts; ``ctx`` is ready after :meth:`start`."""

    #: at most one token re-issue per device this often (a device refused for another reason must not loop)
    REISSUE_EVERY_S = 10.0

    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.broker: EmbeddedBroker | SecureBroker | None = None
        self._reissued: dict[str, float] = {}
        self.publisher: MqttDesiredPublisher | None = None
        self.ingest: Ingest | None = None
        self.ticker: RolloutTicker | None = None
        self.issuer: CertificateIssuer | None = None
        self.ctx: FleetContext | None = None

    def _on_batch(self, res: BatchResult) -> None:
        # a device (re)born gets its desired state again, even if the broker lost the retained copy
        if self.ctx is not None:
            for device_id in res.births:
                self.ctx.rollouts.republish(device_id)

    def _on_messages(self, batch: list[Message]) -> None:
        # a device whose download was refused (its token expired while it was busy or offline) gets its
        # desired state re-published, which carries a fresh token; rate-limited per device
        if self.ctx is None:
            return
        now = time.monotonic()
        for m in batch:
            if download_refused(m) and now - self._reissued.get(m.device_id, -1e9) >= self.REISSUE_EVERY_S:
                self._reissued[m.device_id] = now
                log.info("%s: bundle download refused (%s); re-publishing its desired state with a fresh token",
                         m.device_id, m.payload.message[:200])
                self.ctx.rollouts.republish(m.device_id)

    def _start_secure_broker(self, s: FleetSettings) -> SecureBroker:
        pki = open_or_init_pki(s)
        broker = SecureBroker(pki, s.data_dir / "broker", port=s.broker_tls_port, bind=s.broker_host,
                              fleet_port=s.broker_fleet_port).start()
        log.info("started the secure broker (mTLS, per-device ACL, CRL): devices on %s:%d, fleet on %s:%d",
                 s.broker_host, s.broker_tls_port, *broker.fleet_address)
        return broker

    def start(self) -> FleetContext:
        s = self.settings
        try:
            if s.broker_url == "embedded" and s.secure:
                self.broker = self._start_secure_broker(s)
            elif s.broker_url == "embedded":
                self.broker = EmbeddedBroker(s).start()
                if self.broker.kind == "amqtt":  # the trial broker speaks MQTT 3.1.1 only
                    s = self.settings = s.model_copy(update={"mqtt_v5": False})
            self.publisher = MqttDesiredPublisher(s).start()
            ctx = build_context(s, self.publisher)
            self.ctx = ctx
            if not ctx.trusted_keys:
                log.warning("no trusted signing keys configured: every bundle upload will be refused "
                            "(set trusted_keys or put *.pub files in %s)", s.data_dir / "trusted-keys")
            self.ingest = Ingest(s, ctx.database, stats=ctx.ingest_stats, on_batch=self._on_batch,
                                 on_messages=self._on_messages).start()
            if s.secure:  # devices renew their certificates over their own channel (fleet/security/renewal.py)
                self.issuer = CertificateIssuer(s, open_or_init_pki(s), database=ctx.database).start()
            if s.rollout_ticker:
                self.ticker = RolloutTicker(ctx.rollouts, s.tick_interval_s, holder=s.replica_id).start()
            else:
                log.info("rollout ticker disabled here (rollout_ticker: false): another replica runs rollouts")
        except BaseException:
            self.stop()
            raise
        return ctx

    def stop(self) -> None:
        """Stop in reverse order; ingest drains what it already received."""
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if self.issuer is not None:
            self.issuer.stop()
            self.issuer = None
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.ctx is not None:
            self.ctx.database.dispose()

    def __enter__(self) -> FleetContext:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(settings: FleetSettings, *, announce=print) -> None:
    """``edgekit fleet up``: start everything, print the first admin token once, serve HTTP until stopped."""
    try:
        import uvicorn

        from fleet.api import create_app
        from fleet.auth import ensure_admin_token
    except ImportError as exc:
        raise FleetError(f"the fleet HTTP API needs the fleet extra (pip install 'edgekit[fleet]'): {exc}") from exc
    service = FleetService(settings)
    ctx = service.start()
    try:
        token = ensure_admin_token(ctx)
        host, port = settings.broker_address
        if isinstance(service.broker, SecureBroker):
            broker = (f"{service.broker.kind}, devices on {settings.broker_host}:{settings.broker_tls_port}, "
                      f"fleet on {host}:{port}")
        else:
            broker = f"{service.broker.kind} on {host}:{port}" if service.broker else settings.broker_url
        announce(f"edgekit fleet: API and dashboard on http://{settings.host}:{settings.port} "
                 f"(public URL {settings.public_url}); MQTT broker: {broker}; database: "
                 f"{ctx.database.engine.url.render_as_string(hide_password=True)}")
        if service.broker is not None and not isinstance(service.broker, SecureBroker):
            announce(f"WARNING: {INSECURE_BANNER} (`edgekit fleet up --secure` for mTLS)")
        if token:
            announce(f"admin token (shown once, only its hash is stored): {token}")
        if "127.0.0.1" in (settings.public_url or "") and settings.host in ("0.0.0.0", "::"):
            log.warning("public_url is %s: devices on other hosts cannot download bundles from it; set "
                        "public_url (EDGEKIT_FLEET_PUBLIC_URL) to an address the devices can reach",
                        settings.public_url)
        app = create_app(ctx, public_downloads=settings.public_downloads)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
        server = _server_class(uvicorn)(config)
        server.run()
        if not server.started:
            raise FleetError(f"the HTTP API could not listen on {settings.host}:{settings.port} (port in use?)")
    finally:
        service.stop()




def _server_class(uvicorn):
    """uvicorn's Server, except that SIGTERM/SIGINT are not re-raised after its shutdown.

    uvicorn re-raises a captured signal once it has stopped, which would kill this process before
    ``serve`` stops the broker it started (leaving an orphan mosquitto) and turn a clean stop into
    exit code -15. Here the signal only asks the server to exit; ``serve`` then stops everything.
    """

    class FleetServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return FleetServer

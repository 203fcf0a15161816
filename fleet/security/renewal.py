"""Certificate renewal over the device's own MQTT channel: the fleet side.

Protocol (topics under ``edgekit/v1/<device>/``, payloads in :mod:`edgekit.wire`):

1. The device makes a new key and a CSR (:func:`edgekit.certs.create_csr`; the key never leaves it) and
   publishes a :class:`~edgekit.wire.CertRequest` on ``csr``. It does so by itself once two thirds of its
   certificate's lifetime are gone, or when the fleet asks: ``edgekit fleet renew DEVICE`` publishes a
   retained :class:`~edgekit.wire.CertAnswer` with ``renew=True`` on ``cert``.
2. :class:`CertificateIssuer` (part of ``edgekit fleet up --secure``) receives it through a shared
   subscription (one replica answers). The broker's ACL already guarantees that only the holder of a
   valid certificate for ``<device>`` can write ``edgekit/v1/<device>/csr``; the issuer checks the payload
   names the same device and has :meth:`FleetPKI.sign_device_csr` certify the key (CN must be the
   device id; revoked or never-provisioned ids are refused; the new certificate overlaps the old one).
3. The answer goes back retained on ``cert`` (QoS 1): the certificate, or the reason it was refused.
   Retained, so a device that went offline meanwhile gets it on its next connection.
4. The agent checks the certificate (fleet CA, its CN, its pending key, valid now), swaps key and
   certificate files atomically and loads them into its live TLS context: the running session is never
   interrupted and the next handshake presents the new certificate (``devices/agent/certs.py``).

Every issuance and refusal is audited (actor ``device:<id>``). A request already answered is answered
again from memory (a device that missed the answer re-sends the same CSR); a device asking for a
*different* key more often than ``min_interval_s`` is refused, so a misbehaving one cannot flood the CA.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt

from edgekit import wire
from edgekit.certs import csr_fingerprint
from edgekit.errors import ConfigError, FleetError, WireError
from fleet.mqtt import connect_client, new_client
from fleet.security.pki import FleetPKI
from fleet.settings import FleetSettings

__all__ = ["CertificateIssuer", "request_renewal"]

log = logging.getLogger(__name__)

_STOP = object()


def _publish_answer(client: mqtt.Client, device_id: str, answer: wire.CertAnswer, timeout: float) -> None:
    info = client.publish(wire.topic(device_id, "cert"), wire.encode(answer), qos=1, retain=True)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise FleetError(f"publishing the certificate answer for {device_id} failed: {mqtt.error_string(info.rc)}")
    try:
        info.wait_for_publish(timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise FleetError(f"publishing the certificate answer for {device_id} failed: {exc}") from exc
    if not info.is_published():
        raise FleetError(f"the broker did not acknowledge the certificate answer for {device_id} within {timeout}s")


def request_renewal(settings: FleetSettings, device_id: str, *, timeout: float = 10.0) -> None:
    """Ask ``device_id`` to renew now (retained, so it gets the request when it next connects)."""
    if not wire.valid_device_id(device_id):
        raise ConfigError(f"invalid device id {device_id!r}")
    client = new_client(settings, "renew")
    connect_client(client, settings, timeout=timeout)
    try:
        _publish_answer(client, device_id, wire.CertAnswer(device_id=device_id, renew=True), timeout)
    finally:
        client.disconnect()
        client.loop_stop()


class CertificateIssuer:
    """Answers devices' renewal CSRs (see the module docstring). ``start()`` / ``stop()``."""

    def __init__(self, settings: FleetSettings, pki: FleetPKI, *, database=None,
                 valid_for: dt.timedelta = dt.timedelta(days=365), min_interval_s: float = 60.0,
                 ack_timeout: float = 10.0):
        self.settings = settings
        self.pki = pki
        self.database = database
        self.valid_for = valid_for
        self.min_interval_s = min_interval_s
        self.ack_timeout = ack_timeout
        self.issued = 0
        self.refused = 0
        self._answers: dict[tuple[str, str], tuple[float, wire.CertAnswer]] = {}
        self._last_issue: dict[str, float] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._subscribed = threading.Event()

    # -- MQTT (network thread) ----------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(wire.subscription("csr", shared_group=self.settings.shared_group), qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.error("certificate issuer: the broker refused the csr subscription: %s", reason_codes)
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        self._queue.put((message.topic, bytes(message.payload)))

    # -- worker ---------------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> tuple[str, wire.CertAnswer] | None:
        """Decide one request: ``(device, answer)``, or None for a message that is not one (logged)."""
        try:
            device_id, kind = wire.parse_topic(topic)
            if kind != "csr":
                raise WireError(f"{topic}: not a csr topic")
            req = wire.decode("csr", payload)
        except WireError as exc:
            log.warning("certificate issuer: rejected message on %s: %s", topic, exc)
            self.refused += 1
            return None
        if req.device_id != device_id:
            return device_id, self._refuse(device_id, req.request_id,
                                           f"payload device_id {req.device_id!r} does not match the topic")
        now = time.monotonic()
        cached = self._answers.get((device_id, req.request_id))
        if cached is not None and now - cached[0] < 3600:
            return device_id, cached[1]  # the device missed our answer and asked again: same answer
        try:
            if csr_fingerprint(req.csr_pem.encode()) != req.request_id:
                raise ConfigError("request_id is not the fingerprint of the CSR's key")
            last = self._last_issue.get(device_id)
            if last is not None and now - last < self.min_interval_s:
                raise ConfigError(f"a certificate was issued to {device_id} {now - last:.0f}s ago; "
                                  f"renewals are limited to one per {self.min_interval_s:.0f}s")
            issued = self.pki.sign_device_csr(device_id, req.csr_pem.encode(), renew=True,
                                              valid_for=self.valid_for)
        except ConfigError as exc:
            return device_id, self._refuse(device_id, req.request_id, str(exc))
        self._last_issue[device_id] = now
        self.issued += 1
        answer = wire.CertAnswer(device_id=device_id, request_id=req.request_id, cert_pem=issued.cert_pem.decode(),
                                 serial=issued.serial, not_after=issued.not_after)
        self._answers[(device_id, req.request_id)] = (now, answer)
        log.info("certificate issuer: renewed %s (serial %s, valid until %s, %s)", device_id, issued.serial,
                 f"{issued.not_after:%Y-%m-%d %H:%M:%S}", req.reason)
        self._audit(device_id, "certificate.renew", {"serial": issued.serial, "request_id": req.request_id,
                                                     "reason": req.reason, "not_after": issued.not_after.isoformat()})
        return device_id, answer

    def _refuse(self, device_id: str, request_id: str, reason: str) -> wire.CertAnswer:
        self.refused += 1
        log.warning("certificate issuer: refused %s's renewal request %s: %s", device_id, request_id, reason)
        self._audit(device_id, "certificate.renew.refused", {"request_id": request_id, "reason": reason})
        return wire.CertAnswer(device_id=device_id, request_id=request_id, error=reason[:2048])

    def _audit(self, device_id: str, action: str, details: dict) -> None:
        if self.database is None:
            return
        from fleet.audit import record

        try:
            record(self.database, f"device:{device_id}", action, f"device:{device_id}", details)
        except Exception:  # noqa: BLE001 - an audit failure is logged; the device still gets its answer
            log.exception("certificate issuer: audit entry for %s failed", device_id)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                decided = self.handle(*item)
                if decided is not None and self._client is not None:
                    _publish_answer(self._client, decided[0], decided[1], self.ack_timeout)
            except Exception:  # noqa: BLE001 - one request must never stop the issuer
                log.exception("certificate issuer: answering %s failed", item[0])

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> CertificateIssuer:
        if self._worker is not None:
            raise FleetError("certificate issuer already started")
        client = new_client(self.settings, "certs")
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._worker = threading.Thread(target=self._run, name="fleet-cert-issuer", daemon=True)
        self._worker.start()
        try:
            connect_client(client, self.settings)
            if not self._subscribed.wait(10):
                raise FleetError("the MQTT broker did not confirm the certificate issuer's subscription within 10s")
        except FleetError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join(10)
            self._worker = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> CertificateIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

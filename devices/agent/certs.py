"""Client-certificate renewal over the device's own MQTT channel: the device side.

The fleet side and the protocol are described in ``fleet/security/renewal.py``. Here:

* **When.** Every ``mqtt.cert_check_interval_s`` (and right after each connection) the agent looks at
  its certificate; once less than ``mqtt.cert_renew_fraction`` of its lifetime is left (a third, by
  default) it renews. A retained ``renew`` request from the fleet (``edgekit fleet renew``) starts one
  at once.
* **The key stays here.** A new P-256 key and its CSR are made on the device and kept, 0600, in
  ``<key>.renewal.json`` until the answer arrives (surviving restarts: the same CSR is re-sent until the
  fleet answers). Only the CSR goes out, on ``csr``.
* **Checked before use.** An answer on ``cert`` is accepted only for the pending request, and only
  after :func:`edgekit.certs.check_issued`: signed by the fleet CA this device trusts, CN = its id, for
  its pending key, valid now. A refusal or a bad certificate becomes a ``cert.renewal_failed`` event
  with the reason, and the current certificate stays in use.
* **Applied without downtime, crash-safe.** New certificate and key are written next to the old ones
  (``.new``, fsynced), then renamed over them, key first. :func:`finish_install` runs before the TLS
  context is built and completes (or discards) an install a crash interrupted, so the files on disk are
  always a matching pair. The live TLS context then loads the new pair (``MqttLink.reload_tls``): the
  current session continues, the next handshake presents the new certificate. A ``cert.renewed`` event
  reports the new serial and expiry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgekit.certs import check_issued, create_csr, csr_fingerprint, read_cert
from edgekit.errors import ConfigError, WireError
from edgekit.wire import CertAnswer, CertRequest, decode, encode

__all__ = ["CertRenewer", "finish_install"]

log = logging.getLogger("edgekit.agent.certs")

EventFn = Callable[..., None]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` durably (temporary file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def finish_install(cert_file: Path, key_file: Path) -> str | None:
    """Complete or discard a renewal install a crash interrupted; returns what was done (None: nothing).

    Install order: ``cert.new`` and ``key.new`` written and fsynced, then ``key.new → key``, then
    ``cert.new → cert``. So a ``cert.new`` whose key is in ``key.new`` or already in ``key`` is finished;
    anything else (a half-written ``.new``) is dropped and the old, matching pair stays.
    """
    cert_new, key_new = _new(cert_file), _new(key_file)
    if not cert_new.exists() and not key_new.exists():
        return None
    try:
        cert_pem = cert_new.read_bytes() if cert_new.exists() else b""
        if cert_pem and key_new.exists() and _pair_matches(cert_pem, key_new.read_bytes()):
            os.replace(key_new, key_file)
            os.replace(cert_new, cert_file)
            _fsync_dir(cert_file.parent)
            return "finished an interrupted certificate install (key and certificate)"
        if cert_pem and key_file.exists() and _pair_matches(cert_pem, key_file.read_bytes()):
            os.replace(cert_new, cert_file)
            _fsync_dir(cert_file.parent)
            return "finished an interrupted certificate install (certificate)"
    except OSError as exc:
        log.error("cannot finish the interrupted certificate install in %s: %s", cert_file.parent, exc)
        return None
    for p in (cert_new, key_new):
        with contextlib.suppress(OSError):
            p.unlink()
    return "dropped an incomplete certificate install; the previous certificate stays"


class CertRenewer:
    """Renews the agent's MQTT client certificate through the fleet (see the module docstring)."""

    def __init__(self, device_id: str, *, cert_file: Path, key_file: Path, ca_file: Path, fraction: float,
                 check_interval_s: float, send: Callable[[bytes], bool], event: EventFn,
                 on_installed: Callable[[], Any]):
        self.device_id = device_id
        self.cert_file, self.key_file, self.ca_file = Path(cert_file), Path(key_file), Path(ca_file)
        self.fraction = fraction
        self.check_interval_s = check_interval_s
        self._send = send
        self._event = event
        self._on_installed = on_installed
        self.pending_path = self.key_file.with_name(self.key_file.name + ".renewal.json")
        self.renewals = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sent = float("-inf")
        self._resend_now = False

    # -- pending request (persisted, 0600) ------------------------------------------------------------
    def pending(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.pending_path.read_text())
            return data if {"request_id", "key_pem", "csr_pem"} <= set(data) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable pending renewal %s (%s); starting over", self.pending_path, exc)
            self._drop_pending()
            return None

    def _drop_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()

    def _new_request(self, reason: str) -> dict[str, str]:
        key_pem, csr_pem = create_csr(self.device_id)
        pending = {"request_id": csr_fingerprint(csr_pem), "key_pem": key_pem.decode(), "csr_pem": csr_pem.decode(),
                   "reason": reason}
        _write(self.pending_path, json.dumps(pending).encode(), 0o600)
        self._event("cert.renewal_requested", f"asked the fleet for a new certificate ({reason})",
                    data={"request_id": pending["request_id"]})
        return pending

    def _send_request(self, pending: dict[str, str]) -> None:
        req = CertRequest(device_id=self.device_id, request_id=pending["request_id"], csr_pem=pending["csr_pem"],
                          reason=pending.get("reason", "expiring"))  # type: ignore[arg-type]
        if self._send(encode(req)):
            self._last_sent = time.monotonic()

    # -- decisions ----------------------------------------------------------------------------------------
    def check(self, *, requested: bool = False, resend: bool = False) -> bool:
        """Start a renewal when due (or ``requested``); re-send an unanswered one when ``resend`` or its
        retry time has come. Returns True when a request is pending."""
        with self._lock:
            pending = self.pending()
            if pending is None:
                if not requested and not self._due():
                    return False
                pending = self._new_request("requested" if requested else "expiring")
                resend = True
            if resend or requested or time.monotonic() - self._last_sent >= self.check_interval_s:
                self._send_request(pending)
            return True

    def _due(self) -> bool:
        try:
            facts = read_cert(self.cert_file.read_bytes())
        except (OSError, ConfigError) as exc:
            log.warning("cannot read the client certificate %s: %s", self.cert_file, exc)
            return False
        return facts.due_for_renewal(self.fraction)

    def on_answer(self, raw: bytes) -> None:
        """A message on this device's ``cert`` topic (network thread: the work is done on our thread)."""
        threading.Thread(target=self._answer_safely, args=(raw,), name="edgekit-cert-answer", daemon=True).start()

    def _answer_safely(self, raw: bytes) -> None:
        try:
            self.handle_answer(raw)
        except Exception:  # noqa: BLE001 - a bad answer must not take anything down
            log.exception("certificate answer handling failed")

    def handle_answer(self, raw: bytes) -> str:
        """Act on one ``cert`` message; returns what happened (``ignored``, ``requested``, ``refused``,
        ``rejected``, ``installed``)."""
        if not raw:
            return "ignored"  # a cleared retained message
        try:
            answer: CertAnswer = decode("cert", raw)
        except WireError as exc:
            log.warning("unreadable certificate answer: %s", exc)
            return "ignored"
        if answer.device_id != self.device_id:
            log.warning("certificate answer for %r ignored (this is %r)", answer.device_id, self.device_id)
            return "ignored"
        if answer.renew:
            self.check(requested=True)
            return "requested"
        with self._lock:
            pending = self.pending()
            if pending is None or answer.request_id != pending["request_id"]:
                return "ignored"  # a retained answer to a request already settled
            if answer.error or not answer.cert_pem:
                self._drop_pending()
                self._event("cert.renewal_failed", f"the fleet refused the renewal: {answer.error or 'no certificate'}",
                            level="error", data={"request_id": answer.request_id})
                return "refused"
            cert_pem, key_pem = answer.cert_pem.encode(), pending["key_pem"].encode()
            try:
                facts = check_issued(cert_pem, ca_pem=self.ca_file.read_bytes(), device_id=self.device_id,
                                     key_pem=key_pem)
            except (ConfigError, OSError) as exc:
                self._drop_pending()
                self._event("cert.renewal_failed", f"renewed certificate rejected: {exc}", level="error",
                            data={"request_id": answer.request_id})
                return "rejected"
            self._install(cert_pem, key_pem)
            self._drop_pending()
            self.renewals += 1
        try:
            self._on_installed()
        except Exception:  # noqa: BLE001 - the files are in place; the periodic reload picks them up
            log.exception("loading the renewed certificate into the live TLS context failed")
        self._event("cert.renewed", f"client certificate renewed: serial {facts.serial}, valid until "
                    f"{facts.not_after:%Y-%m-%d %H:%M:%S} UTC",
                    data={"serial": facts.serial, "not_after": facts.not_after.isoformat()})
        return "installed"

    def _install(self, cert_pem: bytes, key_pem: bytes) -> None:
        cert_new, key_new = _new(self.cert_file), _new(self.key_file)
        _write(cert_new, cert_pem, 0o644)
        _write(key_new, key_pem, 0o600)
        os.replace(key_new, self.key_file)
        os.replace(cert_new, self.cert_file)
        _fsync_dir(self.cert_file.parent)

    # -- thread -------------------------------------------------------------------------------------------
    def connected(self) -> None:
        """After every (re)connect: re-send a pending request, or check whether one is due."""
        self._resend_now = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            resend, self._resend_now = self._resend_now, False
            try:
                self.check(resend=resend)
            except Exception:  # noqa: BLE001 - retried on the next interval
                log.exception("certificate renewal check failed")
            self._wake.wait(self.check_interval_s)
            self._wake.clear()

    def start(self) -> CertRenewer:
        self._thread = threading.Thread(target=self._run, name="edgekit-cert-renewal", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

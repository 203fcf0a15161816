"""The secure (mTLS) mosquitto as a child process of the fleet manager: start, stop, reload, revoke.

``fleet up`` in secure mode uses this instead of the plain trial broker::

    broker = SecureBroker(FleetPKI.open(data_dir / "pki"), data_dir / "broker").start()
    host, port = broker.fleet_address          # where the fleet's own clients connect (apply_fleet_tls)
    broker.revoke("cam-17")                    # CRL + ACL deny, SIGHUP: cut off without a restart

Devices connect to ``mqtts://<public host>:8883``; the fleet's clients to the loopback fleet listener
(see :mod:`fleet.security.broker_config` for why the two are separate).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgekit.errors import FleetError
from fleet.procs import stop_process
from fleet.security.broker_config import (
    SecureBrokerFiles,
    reload_broker,
    write_acl,
    write_secure_broker,
)
from fleet.security.pki import FleetPKI

__all__ = ["SecureBroker", "find_mosquitto"]

_RELOAD_MARK = "Reloading config."


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or ``None``."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: have Linux SIGTERM the broker when its parent dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still terminates it on a clean exit


def _connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind


class SecureBroker:
    """mosquitto with the generated mTLS config in ``broker_dir`` (persistence there too)."""

    def __init__(
        self,
        pki: FleetPKI,
        broker_dir: Path,
        *,
        port: int = 8883,
        bind: str = "0.0.0.0",
        fleet_port: int | None = 8884,
        fleet_bind: str = "127.0.0.1",
        persistence: bool = True,
        binary: str | None = None,
    ):
        self.pki = pki
        self.broker_dir = Path(broker_dir)
        self.port, self.bind = port, bind
        self.fleet_port, self.fleet_bind = fleet_port, fleet_bind
        self.persistence = persistence
        self.binary = binary
        self.log = self.broker_dir / "mosquitto-secure.log"
        self.files = SecureBrokerFiles.in_dir(self.broker_dir)
        self._proc: subprocess.Popen | None = None

    @property
    def kind(self) -> str:
        return "mosquitto (mTLS)"

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise FleetError("the secure broker is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def device_address(self) -> tuple[str, int]:
        """Where devices connect (from this host's point of view)."""
        return _connect_host(self.bind), self.port

    @property
    def fleet_address(self) -> tuple[str, int]:
        """Where the fleet manager's own clients connect."""
        if self.fleet_port is None:
            return self.device_address
        return _connect_host(self.fleet_bind), self.fleet_port

    def log_text(self) -> str:
        """The broker's log so far ('' before it wrote one)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, *, timeout: float = 10.0) -> SecureBroker:
        """Write the config (ACL from the current deny-list) and start mosquitto; wait for its listeners."""
        if self.running:
            return self
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise FleetError("the secure broker needs mosquitto (apt-get install mosquitto)")
        addresses = [(self.bind, self.port)] + ([(self.fleet_bind, self.fleet_port)] if self.fleet_port else [])
        for host, port in addresses:
            if not _port_free(host, port):
                raise FleetError(f"cannot start the secure broker: {host}:{port} is already in use")
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self.files = write_secure_broker(
            self.pki, self.broker_dir, port=self.port, bind=self.bind, fleet_port=self.fleet_port,
            fleet_bind=self.fleet_bind, persistence_dir=self.broker_dir if self.persistence else None,
            log_dest=f"file {self.log}",
        )
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.files.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        addresses = [self.device_address] + ([self.fleet_address] if self.fleet_port is not None else [])
        deadline = time.monotonic() + timeout
        for host, port in addresses:
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                    tail = self.log_text()[-600:]
                    self._proc = None
                    raise FleetError(f"the secure broker exited during start-up: {err or tail or 'no output'}")
                try:
                    with socket.create_connection((host, port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise FleetError(f"the secure broker did not listen on {host}:{port} within {timeout:.0f}s") from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Terminate mosquitto (it saves its persistence file and removes its pid file)."""
        if self._proc is not None:
            stop_process(self._proc)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None

    def reload(self, *, timeout: float = 5.0) -> None:
        """SIGHUP: re-read ACL, CRL and server certificate; connected clients stay connected.

        mosquitto handles the signal in its main loop; this returns once its log shows the reload
        (plus a short grace for the re-read itself), so a caller's next connection sees the new state.
        """
        before = self.log_text().count(_RELOAD_MARK)
        reload_broker(self.pid)
        deadline = time.monotonic() + timeout
        while self.log_text().count(_RELOAD_MARK) <= before:
            if not self.running:
                raise FleetError("the secure broker exited while reloading its configuration")
            if time.monotonic() > deadline:
                raise FleetError(f"the secure broker did not confirm the reload within {timeout:.0f}s")
            time.sleep(0.02)
        time.sleep(0.1)

    def revoke(self, device_id: str) -> list[str]:
        """Revoke ``device_id`` in the CA and cut it off in the running broker; returns revoked serials."""
        serials = self.pki.revoke(device_id)
        write_acl(self.pki, self.files)
        if self.running:
            self.reload()
        return serials

    def __enter__(self) -> SecureBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

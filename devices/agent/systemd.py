"""systemd integration: the service unit, and sd_notify over ``NOTIFY_SOCKET`` (no libsystemd needed).

The agent sends ``READY=1`` once it serves, ``STATUS=...`` lines, and ``WATCHDOG=1`` only while its
inference path is alive (a probe through the served model answers in time); if it stops answering,
systemd's ``WatchdogSec=`` kills and restarts it (``Restart=on-failure``).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from edgekit.errors import AgentError

from .config import AgentConfig

__all__ = ["SdNotifier", "Watchdog", "render_unit", "watchdog_interval_s"]


def render_unit(cfg: AgentConfig, config_path: Path, *, executable: str | None = None) -> str:
    """A hardened ``Type=notify`` unit running ``edgekit agent run --config CONFIG``."""
    exe = executable or str(Path(sys.executable).with_name("edgekit"))
    config_path = Path(config_path).resolve()
    state = Path(cfg.state_dir).resolve()
    user = cfg.watchdog.service_user
    user_lines = f"User={user}\nGroup={user}\n" if user else "DynamicUser=yes\n"
    if not user and str(state).startswith("/var/lib/"):
        # With DynamicUser, systemd owns /var/lib/NAME through StateDirectory= (persisted across restarts).
        user_lines += f"StateDirectory={state.relative_to('/var/lib')}\n"
    return (
        "[Unit]\n"
        "Description=edgekit device agent (inference server, telemetry, OTA)\n"
        "Documentation=https://github.com/edgekit/edgekit\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "StartLimitIntervalSec=300\n"
        "StartLimitBurst=10\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={shlex.quote(exe)} agent run --config {shlex.quote(str(config_path))}\n"
        f"WatchdogSec={cfg.watchdog.watchdog_sec}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "TimeoutStartSec=300\n"
        f"{user_lines}"
        "NoNewPrivileges=yes\n"
        "ProtectSystem=strict\n"
        "ProtectHome=read-only\n"
        "PrivateTmp=yes\n"
        "PrivateDevices=no\n"
        "ProtectKernelTunables=yes\n"
        "ProtectKernelModules=yes\n"
        "ProtectControlGroups=yes\n"
        "RestrictSUIDSGID=yes\n"
        "LockPersonality=yes\n"
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"
        f"ReadWritePaths={state}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


class SdNotifier:
    """``sd_notify`` over the datagram socket systemd names in ``NOTIFY_SOCKET`` (no-op when unset)."""

    def __init__(self, address: str | None = None):
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall(message.encode())
        except OSError as exc:
            raise AgentError(f"sd_notify to {self.address} failed: {exc}") from exc
        return True

    def ready(self, status: str = "serving") -> bool:
        return self.notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_interval_s(default: float | None = None) -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (when it is meant for this process), else ``default``."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
        return int(usec) / 2e6
    return default


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval_s`` while ``alive()`` holds; stays silent otherwise."""

    def __init__(self, notifier: SdNotifier, alive: Callable[[], bool], interval_s: float):
        self.notifier = notifier
        self.alive = alive
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.misses = 0

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._loop, name="edgekit-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def tick(self) -> bool:
        """One check: ping when alive; returns whether it pinged."""
        try:
            ok = bool(self.alive())
        except Exception:  # noqa: BLE001 - a failing probe means "not alive"
            ok = False
        if ok:
            try:
                self.notifier.watchdog()
            except AgentError:
                return False
            self.pings += 1
        else:
            self.misses += 1
        return ok

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

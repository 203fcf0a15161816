"""A private mosquitto for benchmarks, soak runs and chaos scenarios (Debian's ``mosquitto`` binary).

``persistent=True`` gives what a production broker needs to keep QoS 1 promises across a crash: the
in-memory database is saved on every change (``autosave_on_changes`` with an interval of 1), so
persistent sessions and their queued messages survive ``SIGKILL``. Mosquitto started as root would drop
to the ``mosquitto`` user, which cannot reach a private folder (pytest's are mode 0700), so when run as
root it is told to stay root (``user root``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgekit.errors import ConfigError

__all__ = ["LocalMosquitto", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalMosquitto:
    """mosquitto on ``host``:``port`` (loopback by default); ``stop(kill=True)`` + ``start()`` simulate a crash on the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None, persistent: bool = False, host: str = "127.0.0.1"):
        binary = mosquitto_binary()
        if binary is None:
            raise ConfigError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = host
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} {host}", "allow_anonymous true", "max_queued_messages 1000000",
                 "max_inflight_messages 0", "log_dest none"]
        if os.geteuid() == 0:
            lines.append("user root")
        if persistent:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_on_changes true",
                      "autosave_interval 1"]
        else:
            lines.append("persistence false")
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalMosquitto:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise ConfigError(f"mosquitto exited with {self.proc.returncode} (config {self.conf})") from None
                time.sleep(0.05)
        raise ConfigError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> LocalMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

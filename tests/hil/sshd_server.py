"""A private OpenSSH server for HIL tests: generated host and client keys, a free loopback port.

Runs Debian's ``/usr/sbin/sshd -D`` with its own config (key authentication only, ``UsePAM no``,
``StrictModes no`` so keys under pytest's tmp folders are accepted). Needs root (sshd's privilege
separation) and the ``openssh-server`` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from servers import free_port, wait_port

__all__ = ["SSHD", "SshServer", "sshd_unavailable_reason"]

SSHD = "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else shutil.which("sshd")


def sshd_unavailable_reason() -> str | None:
    """Why an sshd cannot be started here, or ``None`` when it can."""
    if SSHD is None:
        return "sshd not installed (apt-get install openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"OpenSSH client tool {tool} not installed (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd needs root for privilege separation; the tests run as an unprivileged user"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   capture_output=True)


class SshServer:
    """sshd on 127.0.0.1:``port`` accepting ``root`` with :attr:`client_key`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.log = self.workdir / "sshd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def start(self) -> SshServer:
        _keygen(self.host_key)
        _keygen(self.client_key)
        auth = self.workdir / "authorized_keys"
        auth.write_text(Path(f"{self.client_key}.pub").read_text())
        conf = self.workdir / "sshd_config"
        conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
            "AllowTcpForwarding no\nX11Forwarding no\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation chroot
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-p", str(self.port), "-f", str(conf), "-h", str(self.host_key)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {self.log.read_text()[-500:]}") from None
        time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Where a HIL run happens: this host, or a host reached over SSH.

A :class:`Target` is a context manager that owns a scratch folder on the target for the duration of
a run; ``put`` copies a local file into it and ``run`` executes a command there. :class:`LocalTarget`
does both with the local filesystem and ``subprocess``; :class:`SshTarget` with the OpenSSH ``ssh`` and
``scp`` clients (``BatchMode=yes``: never a password prompt; a given identity file; host-key checking
configurable). Both run the same probe the same way, so a verdict never depends on the transport.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from edgekit.errors import ConfigError, EdgekitError

__all__ = ["LocalTarget", "SshTarget", "Target", "TargetError", "parse_target"]

HostKeyChecking = Literal["yes", "accept-new", "no"]


class TargetError(EdgekitError):
    """The target cannot be reached, or a command or copy on it failed."""


@runtime_checkable
class Target(Protocol):
    """A place to run the probe: owns a scratch folder while entered."""

    #: how the user named it (``local``, ``ssh://user@host:port``)
    name: str
    #: the Python interpreter on the target that has edgekit installed
    python: str

    def __enter__(self) -> Target: ...

    def __exit__(self, *exc: object) -> None: ...

    def put(self, local: Path, name: str | None = None) -> str:
        """Copy ``local`` into the scratch folder; returns its path on the target."""
        ...

    def run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the target (in the scratch folder); never raises for a non-zero exit."""
        ...


class LocalTarget:
    """This host: a temporary folder and a subprocess with this (or a given) interpreter."""

    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> LocalTarget:
        self._dir = tempfile.TemporaryDirectory(prefix="edgekit-hil-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise TargetError("target is not entered (use it as a context manager)")
        return Path(self._dir.name)

    def put(self, local: Path, name: str | None = None) -> str:
        dest = self.workdir / (name or Path(local).name)
        try:
            shutil.copyfile(local, dest)
        except OSError as exc:
            raise TargetError(f"cannot copy {local} to {dest}: {exc}") from exc
        return str(dest)

    def run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, cwd=self.workdir, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"{argv[0]} did not finish within {timeout:.0f}s on {self.name}") from exc
        except OSError as exc:
            raise TargetError(f"cannot run {argv[0]} on {self.name}: {exc}") from exc


class SshTarget:
    """A host over SSH: ``ssh``/``scp`` subprocesses, non-interactive, with a scratch ``mktemp -d`` folder."""

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int = 22,
        identity: Path | None = None,
        python: str = "python3",
        host_key_checking: HostKeyChecking = "accept-new",
        known_hosts: Path | None = None,
        connect_timeout: int = 10,
    ):
        self.host, self.user, self.port = host, user, port
        self.python = python
        self.identity = identity
        self.host_key_checking = host_key_checking
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        who = f"{user}@" if user else ""
        self.name = f"ssh://{who}{host}" + (f":{port}" if port != 22 else "")
        self._workdir: str | None = None
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise TargetError(f"the OpenSSH client '{tool}' is not installed here (apt-get install openssh-client)")

    def _options(self) -> list[str]:
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={self.host_key_checking}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "LogLevel=ERROR",
        ]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return opts

    @property
    def _dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _ssh(self, remote_cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self._options(), "-p", str(self.port), self._dest, remote_cmd]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"command on {self.name} did not finish within {timeout:.0f}s") from exc
        if proc.returncode == 255:  # ssh's own failure: connection, authentication, host key
            raise TargetError(f"ssh to {self.name} failed: {proc.stderr.strip() or 'exit 255'}")
        return proc

    def __enter__(self) -> SshTarget:
        proc = self._ssh("mktemp -d /tmp/edgekit-hil.XXXXXX", timeout=self.connect_timeout + 20)
        if proc.returncode != 0 or not proc.stdout.strip().startswith("/tmp/edgekit-hil."):
            raise TargetError(f"cannot create a scratch folder on {self.name}: {proc.stderr.strip() or proc.stdout.strip()}")
        self._workdir = proc.stdout.strip().splitlines()[-1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._workdir is not None:
            # the run's own outcome matters more than a leftover folder in /tmp
            with contextlib.suppress(TargetError):
                self._ssh(f"rm -rf {shlex.quote(self._workdir)}", timeout=self.connect_timeout + 20)
            self._workdir = None

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            raise TargetError("target is not entered (use it as a context manager)")
        return self._workdir

    def put(self, local: Path, name: str | None = None) -> str:
        remote = f"{self.workdir}/{name or Path(local).name}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        dest = f"{self.user}@{host}" if self.user else host
        argv = ["scp", "-q", *self._options(), "-P", str(self.port), str(local), f"{dest}:{remote}"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"copying {local} to {self.name} took longer than 600s") from exc
        if proc.returncode != 0:
            raise TargetError(f"scp of {local} to {self.name} failed: {proc.stderr.strip() or proc.returncode}")
        return remote

    def run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        return self._ssh(f"cd {shlex.quote(self.workdir)} && {shlex.join(argv)}", timeout=timeout)


def parse_target(
    spec: str,
    *,
    identity: Path | None = None,
    remote_python: str | None = None,
    host_key_checking: HostKeyChecking = "accept-new",
    known_hosts: Path | None = None,
) -> Target:
    """``local`` or ``ssh://[user@]host[:port]`` → a :class:`Target`; anything else is a :class:`ConfigError`."""
    if spec == "local":
        return LocalTarget(python=remote_python)
    parts = urlsplit(spec)
    if parts.scheme != "ssh":
        raise ConfigError(f"--target {spec!r}: use 'local' or 'ssh://user@host:port' (user and port optional)")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise ConfigError(f"--target {spec!r}: invalid port") from exc
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise ConfigError(f"--target {spec!r}: expected ssh://user@host:port (user and port optional) with nothing after the port")
    if identity is not None and not Path(identity).is_file():
        raise ConfigError(f"--identity {identity} is not a file")
    return SshTarget(
        parts.hostname, user=parts.username, port=port, identity=identity, python=remote_python or "python3",
        host_key_checking=host_key_checking, known_hosts=known_hosts,
    )

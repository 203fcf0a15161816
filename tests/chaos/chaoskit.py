"""Parts the chaos scenarios share: a real agent process, a bundle server that can misbehave, bundles.

Everything here is real: the agent is ``edgekit agent run`` in its own process (optionally inside a
network namespace), the bundle server is an HTTP server on a free port, bundles are signed with the
session's key. Fakes are for unit tests; these scenarios break real parts.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from edgekit.bundle import file_sha256, read_manifest
from edgekit.wire import BundleRef, Desired, encode

__all__ = ["AgentProcess", "BundleServer", "desired_for", "long_mode", "wait_until"]


def long_mode() -> bool:
    """``EDGEKIT_CHAOS_LONG=1`` (``make chaos``) runs each scenario longer and more often."""
    return os.environ.get("EDGEKIT_CHAOS_LONG", "") not in ("", "0")


def wait_until(cond, timeout: float = 20.0, poll: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


def desired_for(device: str, url: str, bundle: Path, *, rollout: str = "chaos", generation: int = 1) -> bytes:
    m = read_manifest(bundle)
    ref = BundleRef(name=m.name, version=m.version, url=url, sha256=file_sha256(bundle), size=bundle.stat().st_size)
    return encode(Desired(device_id=device, bundle=ref, rollout_id=rollout, generation=generation))


class _Handler(http.server.BaseHTTPRequestHandler):
    server: BundleServer._Server  # type: ignore[name-defined]

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        name = self.path.lstrip("/")
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        if srv.owner.delay_s:
            time.sleep(srv.owner.delay_s)
        data = path.read_bytes()
        mode = srv.owner.mode
        srv.owner.requests += 1
        if mode == "corrupt":
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        chunk = 4096
        for i in range(0, len(data), chunk):
            self.wfile.write(data[i : i + chunk])
            if srv.owner.throttle_s:
                time.sleep(srv.owner.throttle_s)


class BundleServer:
    """Serves files from ``root``; ``mode`` = ``ok`` | ``corrupt`` (a flipped byte) | ``truncate`` (half, then
    the connection closes); ``delay_s`` waits before answering and ``throttle_s`` after every 4 KiB, so a
    download takes a while."""

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.mode = "ok"
        self.throttle_s = 0.0
        self.delay_s = 0.0
        self.requests = 0
        self._httpd = self._Server((host, 0), _Handler)
        self._httpd.root = self.root  # type: ignore[attr-defined]
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}"

    def add(self, bundle: Path) -> str:
        shutil.copyfile(bundle, self.root / bundle.name)
        return self.url(bundle.name)

    def __enter__(self) -> BundleServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class AgentProcess:
    """``edgekit agent run`` as a child process with its own state folder; killable, restartable."""

    def __init__(self, workdir: Path, *, broker_url: str, device_id: str, seed: Path, keys_dir: Path,
                 soak_s: float = 1.0, telemetry_interval_s: float = 0.1, max_spool: int = 10_000,
                 state_dir: Path | None = None, netns: str | None = None, http_host: str = "127.0.0.1",
                 retry_min_s: float = 1.0):
        from servers import free_port

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.state_dir = state_dir or self.workdir / "state"
        self.port = free_port()
        self.http_host = http_host
        self.netns = netns
        self.log = self.workdir / "agent.log"
        self.config = self.workdir / "agent.yaml"
        self.config.write_text(yaml.safe_dump({
            "state_dir": str(self.state_dir), "profile": "x86-avx2", "bundle": str(seed),
            "server": {"host": http_host, "port": self.port},
            "mqtt": {"url": broker_url, "device_id": device_id, "telemetry_interval_s": telemetry_interval_s,
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 5},
            "spool": {"max_messages": max_spool},
            "ota": {"trusted_keys": [str(keys_dir / "signing.pub")], "soak_s": soak_s, "download_timeout_s": 10,
                    "retry_min_s": retry_min_s},
        }))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> AgentProcess:
        edgekit = str(Path(sys.executable).with_name("edgekit"))
        argv = [edgekit, "agent", "run", "--config", str(self.config), "--log-level", "warning"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
        self.starts += 1
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """The agent's HTTP server answers ``/v2/health/ready`` with 200 (it serves a verified model)."""
        return wait_until(lambda: self.ready(), timeout=timeout, poll=0.1)

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"http://{self.http_host}:{self.port}/v2/health/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def served_version(self, model: str) -> str | None:
        """The version the agent's inference API serves for ``model`` right now (``None``: nothing)."""
        try:
            r = httpx.get(f"http://{self.http_host}:{self.port}/v2/models/{model}", timeout=2.0)
        except httpx.HTTPError:
            return None
        return r.json()["versions"][0] if r.status_code == 200 else None

    def slot_pointer(self) -> dict:
        p = self.state_dir / "slots.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class Netns:
    """A network namespace joined to this host by a veth pair (``10.231.N.1`` here, ``.2`` inside)."""

    def __init__(self, index: int):
        tag = f"{os.getpid() % 10000}{index}"
        self.name = f"ekchaos{tag}"
        self.host_if, self.ns_if = f"ekh{tag}", f"ekn{tag}"
        octet = 100 + (os.getpid() + index) % 100
        self.host_ip, self.ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"

    @staticmethod
    def _ip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)

    def create(self) -> str | None:
        """Set it up; returns why it cannot be done here, or ``None``."""
        if shutil.which("ip") is None:
            return "iproute2 'ip' not installed"
        steps = [
            ("netns", "add", self.name),
            ("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("link", "set", self.ns_if, "netns", self.name),
            ("addr", "add", f"{self.host_ip}/30", "dev", self.host_if),
            ("link", "set", self.host_if, "up"),
            ("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
            ("-n", self.name, "link", "set", self.ns_if, "up"),
            ("-n", self.name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            proc = self._ip(*step)
            if proc.returncode != 0:
                self.destroy()
                return f"'ip {' '.join(step)}' failed: {proc.stderr.strip()}"
        return None

    def link(self, up: bool) -> None:
        self._ip("link", "set", self.host_if, "up" if up else "down")

    def netem(self, spec: str) -> str | None:
        """Apply ``tc qdisc … netem SPEC`` on the host side; returns why not, or ``None``."""
        if shutil.which("tc") is None:
            return "tc (iproute2) not installed"
        proc = subprocess.run(["tc", "qdisc", "add", "dev", self.host_if, "root", "netem", *spec.split()],
                              capture_output=True, text=True, check=False)
        return None if proc.returncode == 0 else f"tc netem unavailable here: {proc.stderr.strip()}"

    def destroy(self) -> None:
        self._ip("link", "del", self.host_if)
        self._ip("netns", "del", self.name)


class FleetProcess:
    """``edgekit fleet up`` against an external broker, SQLite in ``data_dir``; killable and restartable.

    The admin token is printed once, on the first start; it stays valid across restarts (its hash is in
    the database)."""

    def __init__(self, workdir: Path, *, broker_url: str, keys_dir: Path, tick_s: float = 0.5):
        from servers import free_port

        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.workdir / "fleet.yaml"
        self.config.write_text(yaml.safe_dump({
            "data_dir": str(self.data), "broker_url": broker_url, "host": "127.0.0.1", "port": self.port,
            "public_url": self.url, "public_downloads": True, "tick_interval_s": tick_s,
            "trusted_keys": [str(keys_dir / "signing.pub")],
        }))
        self.log = self.workdir / "fleet.log"
        self.token: str | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> FleetProcess:
        edgekit = str(Path(sys.executable).with_name("edgekit"))
        self.proc = subprocess.Popen([edgekit, "fleet", "up", "--config", str(self.config)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self.starts += 1
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.token is None:
                for line in self.log.read_text(errors="replace").splitlines():
                    if line.startswith("admin token"):
                        self.token = line.rsplit(" ", 1)[1].strip()
            if self.token is not None and self._up():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet up exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"fleet up did not come up in {timeout}s:\n{self.tail()}")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self):
        from fleet.client import FleetClient

        return FleetClient(self.url, self.token)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

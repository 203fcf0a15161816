"""The running agent talks to systemd: READY=1 once serving, WATCHDOG=1 only while inference works."""

from __future__ import annotations

import socket

import pytest

from devices.agent.systemd import SdNotifier
from edgekit.errors import RuntimeBackendError

pytestmark = pytest.mark.integration


def _recv_all(s: socket.socket) -> list[bytes]:
    out = []
    s.settimeout(0.05)
    while True:
        try:
            out.append(s.recv(4096))
        except TimeoutError:
            return out


def test_ready_then_watchdog_only_while_inference_is_alive(tmp_path, agent_factory, bundles, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        agent = agent_factory(bundle=str(bundles["v1"]), ota={"soak_s": 0})
        assert isinstance(agent.notifier, SdNotifier) and agent.notifier.address == path
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"READY=1\nSTATUS=serving tiny@1.0.0")
        assert sock.recv(4096) == b"WATCHDOG=1"
        # Break the inference path: the probe fails, so the pings stop (systemd would restart us).
        session = agent.host.current.session

        def broken(feeds):
            raise RuntimeBackendError("device lost")

        monkeypatch.setattr(session, "run", broken)
        import time

        misses = agent.watchdog.misses
        deadline = time.monotonic() + 5
        while agent.watchdog.misses < misses + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _recv_all(sock)  # drop pings sent before the break took effect
        time.sleep(0.5)
        assert b"WATCHDOG=1" not in _recv_all(sock)
        assert agent.watchdog.misses >= 2
        monkeypatch.undo()
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        sock.settimeout(5)
        assert sock.recv(4096) == b"WATCHDOG=1", "pings resume once inference works again"
        agent.stop()
        assert b"STOPPING=1" in _recv_all(sock)

"""systemd: the unit file (checked by systemd-analyze when present) and sd_notify over a real socket."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from devices.agent.config import load_config
from devices.agent.systemd import SdNotifier, Watchdog, render_unit, watchdog_interval_s
from edgekit.errors import AgentError


@pytest.fixture
def agent_yaml(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text(f"state_dir: {tmp_path / 'state'}\nwatchdog: {{watchdog_sec: 20}}\n")
    return f


def test_unit_has_notify_watchdog_restart_and_hardening(agent_yaml, tmp_path):
    unit = render_unit(load_config(agent_yaml), agent_yaml, executable="/usr/bin/edgekit")
    for line in ("Type=notify", "WatchdogSec=20", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", f"ReadWritePaths={tmp_path / 'state'}", "DynamicUser=yes",
                 f"ExecStart=/usr/bin/edgekit agent run --config {agent_yaml}"):
        assert line in unit.splitlines(), line


def test_dedicated_user(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text("state_dir: /var/lib/edgekit-agent\nwatchdog: {service_user: edgekit}\n")
    unit = render_unit(load_config(f), f)
    assert "User=edgekit" in unit and "DynamicUser" not in unit


def test_cli_writes_the_unit_and_systemd_analyze_accepts_it(agent_yaml, tmp_path):
    from typer.testing import CliRunner

    from devices.cli import agent_app

    out = tmp_path / "edgekit-agent.service"
    exe = shutil.which("true") or "/bin/true"
    res = CliRunner().invoke(agent_app, ["install-service", "--config", str(agent_yaml), "--output", str(out),
                                         "--executable", exe])
    assert res.exit_code == 0, res.output
    assert "Type=notify" in out.read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd): unit written but not verified")
    (tmp_path / "state").mkdir(exist_ok=True)
    proc = subprocess.run([analyze, "verify", str(out)], capture_output=True, text=True, timeout=60)
    # systemd-analyze exits 0 on ignored lines (a bad value is "ignoring"); any remark on our unit fails.
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "edgekit-agent.service" in ln]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not problems, problems


def _listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s, path


def test_sd_notify_sends_datagrams(tmp_path):
    s, path = _listener(tmp_path)
    with s:
        n = SdNotifier(path)
        assert n.ready("serving tiny@1")
        assert s.recv(4096) == b"READY=1\nSTATUS=serving tiny@1"
        n.watchdog()
        assert s.recv(4096) == b"WATCHDOG=1"
    assert SdNotifier("").notify("READY=1") is False
    with pytest.raises(AgentError, match="sd_notify"):
        SdNotifier(str(tmp_path / "missing.sock")).notify("READY=1")


def test_watchdog_pings_only_while_alive(tmp_path):
    s, path = _listener(tmp_path)
    state = {"alive": True}
    wd = Watchdog(SdNotifier(path), lambda: state["alive"], interval_s=0.05)
    with s:
        assert wd.tick() and s.recv(64) == b"WATCHDOG=1"
        state["alive"] = False
        assert not wd.tick()
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(64)
        wd.alive = lambda: 1 / 0  # a crashing probe is "not alive"
        assert not wd.tick()
        assert wd.misses == 2


def test_watchdog_interval_from_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s(None) is None

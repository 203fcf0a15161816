"""``edgekit agent run`` / ``install-service``: bad input is one red line and exit code 1; the quick start serves."""

from __future__ import annotations

import signal
import subprocess

import pytest
from agent_crash_harness import AGENT_CMD, served_version
from agent_testlib import wait_for
from servers import free_port

from edgekit.cli import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["agent", *args])
    err = capsys.readouterr().err
    return exc.value.code, err


def test_bad_config_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "agent.yaml"
    bad.write_text("server: {port: -1}\n")
    code, err = _run(["run", "--config", str(bad)], capsys)
    assert code == 1 and "server.port" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--bundle", "/nonexistent.ekb"], "does not exist"),
        (["run", "--mqtt", "mqtt://127.0.0.1:1"], "--mqtt and --device-id go together"),
        (["run", "--mqtt", "http://x", "--device-id", "d"], "mqtt.url"),
        (["run", "--log-level", "loud"], "--log-level"),
        (["install-service", "--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_arguments(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(args, capsys)
    assert code == 1 and needle in err, err
    assert "Traceback" not in err


def test_no_trusted_key_is_refused(tmp_path, capsys, bundles):
    code, err = _run(["run", "--bundle", str(bundles["v1"]), "--state-dir", str(tmp_path / "s"),
                      "--profile", "x86-avx2"], capsys)
    assert code == 1 and "no trusted public key" in err


@pytest.mark.integration
def test_quick_start_serves_and_stops_cleanly_on_sigterm(tmp_path, bundles):
    port = free_port()
    proc = subprocess.Popen([*AGENT_CMD, "--bundle", str(bundles["v1"]), "--port", str(port), "--state-dir",
                             str(tmp_path / "state"), "--trusted-key", str(bundles["pub"]), "--profile", "x86-avx2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or served_version(port) == "1.0.0", 60, 0.1, "quick start serving")
        assert proc.poll() is None, proc.stdout.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "Traceback" not in out

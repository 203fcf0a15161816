"""``make demo`` in ``--quick`` mode, end to end with every real part (fleet, broker, agents, Iceberg),
then a re-run in the same folder interrupted with SIGTERM: it must stop everything it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _needs_broker() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("the demo's fleet needs the mosquitto broker (apt install mosquitto)")


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append((int(proc.name), cmd))
    return found


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    _needs_broker()
    return tmp_path_factory.mktemp("demo") / "out"


@pytest.mark.timeout(900)
def test_quick_demo_runs_the_whole_flow(demo_out):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py"), "--quick", "--out", str(demo_out)],
                       capture_output=True, text=True, cwd=REPO, timeout=880)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    for stage in ("train the cloud teacher", "edgekit compress", "fleet in a box", "device agent",
                  "push the signed bundle", "roll bearing-fault-x86@1.0.0 out", "held-out field set",
                  "Iceberg tables", "where to look"):
        assert stage in out, f"stage missing from the output: {stage}"
    assert "skipped:" not in out
    results = json.loads((demo_out / "pdm" / "results.json").read_text())
    assert results["rollout"]["state"] == "completed"
    for phase in ("reference", "field"):
        assert results["served"][phase]["windows"] > 0 and results["served"][phase]["errors"] == 0
    plots = results["analysis"]["plots"]
    assert any(p.endswith("pump-01.png") for p in plots)
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert "dashboard:" in out and "admin token:" in out
    assert not _processes_mentioning(str(demo_out)), "the demo left processes running"


@pytest.mark.timeout(600)
def test_rerun_reuses_artifacts_and_sigterm_stops_everything(demo_out):
    if not (demo_out / "pdm" / "teacher" / "teacher.json").exists():
        pytest.skip("needs the quick demo's artifacts from the previous test")
    log = demo_out.parent / "rerun.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-u", str(REPO / "examples" / "demo.py"), "--quick", "--out",
                                 str(demo_out)], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 400
        while "online: pump-01" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the re-run never got its agent online"
            time.sleep(1)
        text = log.read_text()
        assert "teacher already trained" in text  # idempotent: the cached teacher is reused
        assert _processes_mentioning(str(demo_out / "pdm" / "fleet")), "the fleet should be running now"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)
    assert not _processes_mentioning(str(demo_out)), "SIGTERM left the demo's children running"
    assert "stopping everything" in log.read_text()

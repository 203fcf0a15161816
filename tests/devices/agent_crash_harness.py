"""Shared by the crash-safety test and its longer hil/ variant: run agent processes, SIGKILL them at random
points of an OTA, and check after every kill that the state on disk names a bundle that verifies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devices.agent.slots import SlotStore
from edgekit.bundle import verify_bundle
from edgekit.signing import load_public_key

AGENT_CMD = [sys.executable, "-c", "from edgekit.cli import main; main()", "agent", "run", "--log-level", "warning"]


@dataclass
class CrashReport:
    kills: int = 0
    served: list[str] = field(default_factory=list)
    on_disk: list[str] = field(default_factory=list)


def write_config(path: Path, *, state: Path, port: int, broker_url: str, device_id: str, pub: Path,
                 seed: Path, soak_s: float = 1.0) -> Path:
    path.write_text(
        f"state_dir: {state}\nprofile: x86-avx2\nbundle: {seed}\nruntime_threads: 1\n"
        f"server: {{port: {port}}}\n"
        f"mqtt: {{url: '{broker_url}', device_id: {device_id}, telemetry_interval_s: 0.5}}\n"
        f"ota: {{trusted_keys: ['{pub}'], soak_s: {soak_s}, max_boot_attempts: 50}}\n"
    )
    return path


def start(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*AGENT_CMD, "--config", str(config)], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def served_version(port: int) -> str | None:
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/tiny/infer", timeout=2,
                       json={"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.1] * 64}]})
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        raise AssertionError(f"agent answered {r.status_code}: {r.text}")
    return r.json()["model_version"]


def check_disk(state: Path, pub: Path, allowed: set[str]) -> str:
    """The active slot's bundle verifies against the trusted key and is one of ``allowed``."""
    ptr = SlotStore(state).read()
    assert ptr.active is not None, "no active slot after a kill"
    with tempfile.TemporaryDirectory() as tmp:
        vb = verify_bundle(SlotStore(state).bundle_path(ptr.active.slot), [load_public_key(pub)], Path(tmp) / "x")
    assert vb.manifest.version == ptr.active.version and vb.manifest.version in allowed, vb.manifest.ref
    return vb.manifest.version


def kill_loop(config: Path, state: Path, pub: Path, port: int, *, kills: int, max_delay_s: float, log: Path,
              allowed: set[str], seed: int = 0, before_start=None) -> CrashReport:
    """Start, SIGKILL after a random delay, check the disk; ``before_start(i)`` may change the desired state."""
    rng = random.Random(seed)
    report = CrashReport()
    for i in range(kills):
        if before_start is not None:
            before_start(i)
        proc = start(config, log)
        deadline = time.monotonic() + rng.uniform(0.3, max_delay_s)
        while time.monotonic() < deadline and proc.poll() is None:
            v = served_version(port)
            if v is not None:
                assert v in allowed, f"served {v}"
                report.served.append(v)
            time.sleep(0.05)
        if proc.poll() is not None:
            raise AssertionError(f"agent exited by itself with {proc.returncode}; see {log}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        report.kills += 1
        if SlotStore(state).read().active is not None:
            report.on_disk.append(check_disk(state, pub, allowed))
    return report

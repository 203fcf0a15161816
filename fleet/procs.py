"""Child-process helpers shared by the fleet's broker launchers."""

from __future__ import annotations

import subprocess

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen, *, grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s`` (mosquitto saves its persistence then), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

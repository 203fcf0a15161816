"""Shared helpers for benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["BENCH_DIR", "machine", "write_result"]

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def write_result(name: str, result: dict, table_md: str) -> Path:
    """Write ``bench/NAME.json`` (result + machine + time) and ``bench/NAME.md`` (the table)."""
    BENCH_DIR.mkdir(exist_ok=True)
    data = {"name": name, "measured_at": datetime.now(timezone.utc).isoformat(), "machine": machine()} | result
    (BENCH_DIR / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    (BENCH_DIR / f"{name}.md").write_text(
        f"### {name}\n\nMeasured {data['measured_at'][:19]}Z on {m['cpu']} ({m['cores']} cores).\n\n{table_md}\n"
    )
    return BENCH_DIR / f"{name}.json"

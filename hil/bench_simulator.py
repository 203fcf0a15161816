"""1,000 simulated devices publishing telemetry every second: does anything get lost at QoS 1?

Claim (issue 7): the simulator holds 1,000 devices × 1 msg/s on this 2-core machine, and with the
fleet manager's ingest consuming the stream nothing is lost at QoS 1. Measured in one run:

* the simulator runs as its own process (``edgekit hil simulate``) against a private mosquitto;
* a bare paho subscriber (:class:`hil.collector.WireCollector`, the baseline) and the fleet's
  :class:`fleet.ingest.Ingest` writing to a fresh SQLite database both consume the stream;
* loss = seqs a device allocated that never reached the consumer (counted per device from the
  simulator's final report); the ingest's figure is ``stored / collector received``.

``python -m hil.bench_simulator --duration 300`` is the 5-minute run; the default is 60 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from hil.broker import LocalMosquitto
from hil.collector import WireCollector
from hil.report import write_result

DEVICES = 1000
DURATION_S = 60.0
INTERVAL_S = 1.0


def _ingest(broker_url: str, data_dir: Path):
    """The fleet's ingest on a fresh SQLite database, or ``None`` (with why) when the fleet is not installed."""
    try:
        from fleet.db.base import Database
        from fleet.db.migrate import upgrade
        from fleet.ingest import Ingest
        from fleet.settings import load_settings
    except ImportError as exc:
        return None, None, f"fleet ingest unavailable: {exc}"
    settings = load_settings(data_dir=data_dir, broker_url=broker_url, ingest_flush_s=0.2)
    db = Database(f"sqlite:///{data_dir / 'fleet.db'}")
    upgrade(db)
    return Ingest(settings, db), db, None


def _ingest_missing(db, last_seq: dict[str, int]) -> int:
    from sqlalchemy import select

    from fleet.db.models import Event, Telemetry

    got: dict[str, set[int]] = {}
    with db.session() as s:
        for table in (Telemetry, Event):
            for dev, seq in s.execute(select(table.device_id, table.seq)):
                got.setdefault(dev, set()).add(seq)
    return sum(1 for dev, last in last_seq.items() for q in range(1, last + 1) if q not in got.get(dev, set()))


def run(devices: int = DEVICES, duration_s: float = DURATION_S, interval_s: float = INTERVAL_S) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-sim-") as tmp:
        tmp = Path(tmp)
        with LocalMosquitto(tmp / "broker") as broker:
            ingest, db, why = _ingest(broker.url, tmp)
            if ingest is not None:
                ingest.start()
            with WireCollector(broker.host, broker.port) as col:
                report_path = tmp / "sim.json"
                edgekit = str(Path(sys.executable).with_name("edgekit"))
                argv = [edgekit, "hil", "simulate", "--devices", str(devices), "--broker", broker.url,
                        "--duration", str(duration_s), "--telemetry-interval", str(interval_s),
                        "--download", "simulate", "--json", "--report", str(report_path)]
                t0 = time.monotonic()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                ps = psutil.Process(proc.pid)
                cpu = 0.0
                peak_rss = 0.0
                while proc.poll() is None:
                    try:
                        times = ps.cpu_times()
                        cpu = times.user + times.system
                        peak_rss = max(peak_rss, ps.memory_info().rss / 2**20)
                    except psutil.Error:
                        pass
                    time.sleep(0.5)
                wall = time.monotonic() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"simulator failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
                rep = json.loads(report_path.read_text())
                last_seq = rep["last_seq"]
                miss = col.wait_complete(last_seq, timeout=30)
                collector_missing = sum(len(v) for v in miss.values())
                received = col.received
            result: dict[str, Any] = {
                "devices": devices, "duration_s": duration_s, "interval_s": interval_s,
                "connected_at_end": rep["connected"], "telemetry_sent": rep["telemetry_sent"],
                "seqs_allocated": sum(last_seq.values()), "sim_acked": rep["acked"], "sim_unacked": rep["unacked"],
                "sim_evicted": rep["evicted"], "collector_received": received,
                "collector_duplicates": col.duplicates, "collector_missing": collector_missing,
                "sim_cpu_s": cpu, "sim_cpu_percent_of_one_core": 100.0 * cpu / wall, "sim_peak_rss_mb": peak_rss,
                "msgs_per_s": rep["telemetry_sent"] / duration_s,
            }
            if ingest is not None:
                ingest.wait_idle(timeout=60)
                ingest.stop()
                result["ingest"] = ingest.stats.snapshot()
                result["ingest_missing"] = _ingest_missing(db, last_seq)
                db.dispose()
            else:
                result["ingest"] = why
    ok = (result["collector_missing"] == 0 and result["connected_at_end"] == devices
          and result.get("ingest_missing", 0) == 0)
    result["pass"] = ok
    return result


def _table(r: dict[str, Any]) -> str:
    ing = r.get("ingest")
    ingest_line = (f"| fleet ingest: seqs missing | {r['ingest_missing']} of {r['seqs_allocated']} (rows stored "
                   f"{ing['stored']} incl. status/reported, duplicates {ing['duplicates']}, invalid {ing['invalid']}) |"
                   if isinstance(ing, dict) else f"| fleet ingest | {ing} |")
    return "\n".join([
        f"{r['devices']} simulated devices × 1 msg per {r['interval_s']:g} s for {r['duration_s']:.0f} s, QoS 1.\n",
        "| figure | value |", "|---|---|",
        f"| telemetry messages sent | {r['telemetry_sent']} ({r['msgs_per_s']:.0f}/s) |",
        f"| bare paho subscriber (baseline): seqs missing | {r['collector_missing']} of {r['seqs_allocated']} |",
        ingest_line,
        f"| simulator CPU | {r['sim_cpu_percent_of_one_core']:.1f}% of one core, peak RSS {r['sim_peak_rss_mb']:.0f} MB |",
        f"| devices connected at the end | {r['connected_at_end']} / {r['devices']} |",
        "", f"loss at QoS 1 = 0 for both consumers: {'PASS' if r['pass'] else 'FAIL'}",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m hil.bench_simulator", description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=DEVICES)
    ap.add_argument("--duration", type=float, default=DURATION_S)
    ap.add_argument("--interval", type=float, default=INTERVAL_S)
    args = ap.parse_args(argv or [])
    result = run(args.devices, args.duration, args.interval)
    table = _table(result)
    write_result("simulator", result, table)
    print(table)
    return result


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:])["pass"] else 1)

"""Fleet-manager benchmarks, one run (issue 5). Writes ``bench/fleet.json`` and ``bench/fleet.md``.

1. **Ingest rate vs a bare paho subscriber**, same broker, same stream: a publisher process sends
   ``--messages`` telemetry messages at QoS 1 from 1,000 simulated device ids as fast as it can; the
   consumer is either a bare paho subscriber that only counts (the baseline) or the fleet's
   :class:`fleet.ingest.Ingest` (validate, batch, de-duplicate, write to SQLite). Rate = messages /
   (time the consumer is done − time the publisher started). Rounds alternate bare / ingest so drift of
   this shared machine hits both alike; the claim compares medians: ingest ≥ 80% of bare, and 0 loss
   (every ``(device, seq)`` stored exactly once).
2. **Rollout to 1,000 simulated agents** (``edgekit hil simulate`` in its own process: real MQTT topics
   and payloads, the agent's OTA state machine, a fake runtime) through the real fleet manager (broker,
   ingest, ticker, HTTP API for bundle downloads). Claim: a ``1,10,50,100`` rollout completes within the
   waves' soak time + 60 s.

``python -m hil.bench_fleet [--messages 50000] [--rounds 3] [--soak 5]``; ``--publish`` is the internal
publisher mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hil.broker import LocalMosquitto, free_port
from hil.report import write_result

DEVICES = 1000


# -- publisher (a separate process) --------------------------------------------------------------
def publish(broker_port: int, messages: int, devices: int) -> None:
    """Publish ``messages`` telemetry payloads round-robin over ``devices`` ids at QoS 1; print timings."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekit import wire

    ids = [f"bench-{i:05d}" for i in range(devices)]
    topics = [wire.topic(d, "telemetry") for d in ids]
    model = wire.ModelRef(name="tiny", version="1.0.0")
    # pre-encode so the publisher spends its time publishing
    payloads = []
    for n in range(messages):
        d = n % devices
        payloads.append(wire.encode(wire.Telemetry(
            device_id=ids[d], seq=n // devices + 1, model=model, requests=50, errors=0,
            latency=wire.LatencyStats(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0), cpu_percent=12.5)))
    acked = threading.Event()
    count = [0]

    def on_publish(c, u, mid, rc, props):
        count[0] += 1
        if count[0] >= messages:
            acked.set()

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.time_ns()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", broker_port)
    c.loop_start()
    t0 = time.time()
    for n in range(messages):
        c.publish(topics[n % devices], payloads[n], qos=1)
    acked.wait(600)
    t1 = time.time()
    c.loop_stop()
    c.disconnect()
    print(json.dumps({"start": t0, "acked": t1, "count": count[0]}), flush=True)


def _start_publisher(port: int, messages: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hil.bench_fleet", "--publish", str(port), "--messages",
                             str(messages)], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))


def _publisher_result(proc: subprocess.Popen) -> dict[str, float]:
    out, _ = proc.communicate(timeout=900)
    return json.loads(out.strip().splitlines()[-1])


# -- consumers ----------------------------------------------------------------------------------
def round_bare(port: int, messages: int) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: set[tuple[str, bytes]] = set()  # not used for speed: counts only, like a bare subscriber
    count = [0]
    done = threading.Event()
    finished = [0.0]

    def on_message(c, u, m):
        count[0] += 1
        if count[0] >= messages:
            finished[0] = time.time()
            done.set()

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{time.time_ns()}")
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("edgekit/v1/+/telemetry", qos=1)
    subscribed.wait(10)
    pub = _start_publisher(port, messages)
    done.wait(900)
    p = _publisher_result(pub)
    sub.loop_stop()
    sub.disconnect()
    del seen
    elapsed = (finished[0] or time.time()) - p["start"]
    return {"consumer": "bare paho", "received": count[0], "elapsed_s": elapsed,
            "rate_per_s": count[0] / elapsed, "publisher_rate_per_s": messages / (p["acked"] - p["start"])}


class _Bare:
    """The baseline: a bare paho subscriber that only counts telemetry messages."""

    def __init__(self, port: int, messages: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages, self.count, self.finished = messages, 0, 0.0
        self.done = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-bare-{time.time_ns()}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("edgekit/v1/+/telemetry", qos=1)
        subscribed.wait(10)

    def _on_message(self, c, u, m) -> None:
        self.count += 1
        if self.count >= self.messages:
            self.finished = time.time()
            self.done.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def round_both(port: int, messages: int, workdir: Path) -> dict[str, Any]:
    """Both consumers on the same stream at once: same publisher, same moment, same machine load."""
    from fleet.db.base import Database
    from fleet.db.migrate import upgrade
    from fleet.ingest import Ingest
    from fleet.settings import load_settings

    data = workdir / f"both-{time.time_ns()}"
    data.mkdir(parents=True)
    # the production ingest (persistent MQTT 5 session, acknowledged after commit), as a fresh replica
    # whose session expires a second after the round, so it takes no share of the next round's stream
    settings = load_settings(data_dir=data, broker_url=f"mqtt://127.0.0.1:{port}", ingest_session_expiry_s=1,
                             replica_id=f"bench-{time.time_ns()}")
    db = Database(settings.database)
    upgrade(db)
    ing = Ingest(settings, db).start()
    bare = _Bare(port, messages)
    time.sleep(0.5)
    pub = _start_publisher(port, messages)
    deadline = time.monotonic() + 900
    ingest_done = 0.0
    while time.monotonic() < deadline:
        st = ing.stats
        if not ingest_done and st.stored + st.duplicates + st.invalid >= messages:
            ingest_done = time.time()
        if ingest_done and bare.done.is_set():
            break
        time.sleep(0.005)
    p = _publisher_result(pub)
    bare.close()
    ing.stop()
    time.sleep(1.5)  # its session expires
    rows, distinct = _count_rows(db)
    db.dispose()
    shutil.rmtree(data, ignore_errors=True)
    bare_s, ingest_s = (bare.finished or time.time()) - p["start"], (ingest_done or time.time()) - p["start"]
    return {"consumer": "both at once", "bare_rate_per_s": bare.count / bare_s, "ingest_rate_per_s": rows / ingest_s,
            "ratio": (rows / ingest_s) / (bare.count / bare_s), "stored_rows": rows, "distinct_device_seq": distinct,
            "publisher_rate_per_s": messages / (p["acked"] - p["start"])}


def _count_rows(db) -> tuple[int, int]:
    from sqlalchemy import func, select

    from fleet.db.models import Telemetry

    with db.session() as s:
        rows = s.scalar(select(func.count()).select_from(Telemetry))
        distinct = s.scalar(select(func.count()).select_from(
            select(Telemetry.device_id, Telemetry.seq).distinct().subquery()))
    return rows, distinct


def round_ingest(port: int, messages: int, workdir: Path) -> dict[str, Any]:
    from fleet.db.base import Database
    from fleet.db.migrate import upgrade
    from fleet.ingest import Ingest
    from fleet.settings import load_settings

    data = workdir / f"ingest-{time.time_ns()}"
    data.mkdir(parents=True)
    # the production ingest (persistent MQTT 5 session, acknowledged after commit), as a fresh replica
    # whose session expires a second after the round, so it takes no share of the next round's stream
    settings = load_settings(data_dir=data, broker_url=f"mqtt://127.0.0.1:{port}", ingest_session_expiry_s=1,
                             replica_id=f"bench-{time.time_ns()}")
    db = Database(settings.database)
    upgrade(db)
    ing = Ingest(settings, db).start()
    time.sleep(0.5)  # subscriptions in place
    pub = _start_publisher(port, messages)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        st = ing.stats
        if st.stored + st.duplicates + st.invalid >= messages:
            break
        time.sleep(0.005)
    finished = time.time()
    p = _publisher_result(pub)
    ing.stop()
    time.sleep(1.5)  # its session expires
    rows, distinct = _count_rows(db)
    db.dispose()
    shutil.rmtree(data, ignore_errors=True)
    elapsed = finished - p["start"]
    return {"consumer": "fleet ingest", "received": ing.stats.received, "stored_rows": rows,
            "distinct_device_seq": distinct, "invalid": ing.stats.invalid, "duplicates": ing.stats.duplicates,
            "elapsed_s": elapsed, "rate_per_s": rows / elapsed,
            "publisher_rate_per_s": messages / (p["acked"] - p["start"])}


def bench_ingest(messages: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Alternating rounds (each consumer alone) and simultaneous rounds (both on one stream)."""
    results: list[dict[str, Any]] = []
    with LocalMosquitto(workdir / "broker") as broker:
        for r in range(rounds):
            for fn in (round_bare, round_ingest, round_both):
                res = fn(broker.port, messages) if fn is round_bare else fn(broker.port, messages, workdir)
                res["round"] = r + 1
                results.append(res)
                if fn is round_both:
                    print(f"  round {r + 1} both: bare {res['bare_rate_per_s']:.0f} msg/s, ingest "
                          f"{res['ingest_rate_per_s']:.0f} msg/s", file=sys.stderr)
                else:
                    print(f"  round {r + 1} {res['consumer']}: {res['rate_per_s']:.0f} msg/s "
                          f"(publisher {res['publisher_rate_per_s']:.0f}/s)", file=sys.stderr)
    alone_bare = statistics.median(x["rate_per_s"] for x in results if x["consumer"] == "bare paho")
    alone_ingest = statistics.median(x["rate_per_s"] for x in results if x["consumer"] == "fleet ingest")
    both = [x for x in results if x["consumer"] == "both at once"]
    ingest_runs = [x for x in results if x["consumer"] in ("fleet ingest", "both at once")]
    lost = max(messages - x["distinct_device_seq"] for x in ingest_runs)
    dupes = max(x["stored_rows"] - x["distinct_device_seq"] for x in ingest_runs)
    ratio_same_stream = statistics.median(x["ratio"] for x in both)
    return {"messages": messages, "devices": DEVICES, "rounds": results,
            "alone": {"bare_rate_per_s": alone_bare, "ingest_rate_per_s": alone_ingest,
                      "ratio": alone_ingest / alone_bare},
            "same_stream": {"bare_rate_per_s": statistics.median(x["bare_rate_per_s"] for x in both),
                            "ingest_rate_per_s": statistics.median(x["ingest_rate_per_s"] for x in both),
                            "ratio": ratio_same_stream},
            "ingest_lost": lost, "ingest_duplicate_rows": dupes,
            "pass": ratio_same_stream >= 0.8 and lost == 0 and dupes == 0}


# -- rollout to 1,000 simulated agents ------------------------------------------------------------
def bench_rollout(devices: int, soak_s: float, workdir: Path) -> dict[str, Any]:
    import uvicorn

    from edgekit.signing import generate_keypair, load_signing_key
    from fleet.api import create_app
    from fleet.rollouts import RolloutSpec
    from fleet.service import FleetService
    from fleet.settings import load_settings

    keys = workdir / "keys"
    priv, pub = generate_keypair(keys)
    bundles = _tiny_bundles(workdir / "bundles", load_signing_key(priv))
    with LocalMosquitto(workdir / "rollout-broker") as broker:
        port = free_port()
        settings = load_settings(data_dir=workdir / "fleet", broker_url=broker.url, port=port, host="127.0.0.1",
                                 trusted_keys=[pub], tick_interval_s=1.0, public_downloads=True)
        service = FleetService(settings)
        ctx = service.start()
        server = uvicorn.Server(uvicorn.Config(create_app(ctx, public_downloads=True), host="127.0.0.1",
                                               port=port, log_level="warning", access_log=False, lifespan="off"))
        threading.Thread(target=server.run, daemon=True).start()
        for b in bundles:
            ctx.registry.upload(b)
        sim = subprocess.Popen(
            [sys.executable, "-c", "from edgekit.cli import main; main()", "hil", "simulate", "--devices",
             str(devices), "--broker", broker.url, "--fleet-url", f"http://127.0.0.1:{port}", "--key", str(pub),
             "--telemetry-interval", "5", "--duration", "0", "--json", "--prefix", "sim"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[1]))
        try:
            _wait(lambda: _online(ctx) >= devices, 180, f"{devices} simulated devices online")
            spec = RolloutSpec.build(bundle="tiny@2.0.0", selector="all", waves="1,10,50,100", soak_s=soak_s,
                                     install_timeout_s=120)
            t0 = time.monotonic()
            st = ctx.rollouts.create(spec)
            timeline = []
            last = None
            while time.monotonic() - t0 < 4 * soak_s + 600:
                st = ctx.rollouts.status(st.id)
                key = (st.state, st.current_wave, st.waves[st.current_wave].state)
                if key != last:
                    timeline.append({"t_s": round(time.monotonic() - t0, 1), "state": st.state,
                                     "wave": st.current_wave + 1, "wave_state": key[2],
                                     "installed": sum(w.installed for w in st.waves)})
                    last = key
                if st.state != "running":
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - t0
        finally:
            sim.terminate()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
            server.should_exit = True
            service.stop()
    budget = 4 * soak_s + 60
    return {"devices": devices, "soak_s": soak_s, "waves": [1, 10, 50, 100], "elapsed_s": elapsed,
            "budget_s": budget, "state": st.state, "installed": sum(w.installed for w in st.waves),
            "failed": sum(w.failed for w in st.waves), "timeline": timeline,
            "pass": st.state == "completed" and elapsed <= budget}


def _online(ctx) -> int:
    from sqlalchemy import func, select

    from fleet.db.models import Device

    with ctx.database.session() as s:
        return s.scalar(select(func.count()).select_from(Device).where(Device.online.is_(True))) or 0


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _tiny_bundles(out: Path, key) -> list[Path]:
    """Two versions of a tiny classifier, built with the onnx helper API (no torch)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtimes.packaging import bundle_from_onnx

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, version in enumerate(("1.0.0", "2.0.0")):
        rng = np.random.default_rng(i)
        fc = numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "fc")
        graph = helper.make_graph(
            [helper.make_node("Flatten", ["image"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["logits"])],
            "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], initializer=[fc])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx_path = out / f"tiny-{version}.onnx"
        onnx.save(model, onnx_path)
        paths.append(out / f"tiny-{version}.ekb")
        bundle_from_onnx(onnx_path, name="tiny", version=version, key=key, out=paths[-1], labels=["a", "b", "c"])
    return paths


# -- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks (``argv`` as on the command line; none: the defaults); returns the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--soak", type=float, default=5.0, help="soak per wave of the 1,000-agent rollout (s)")
    ap.add_argument("--devices", type=int, default=DEVICES)
    ap.add_argument("--skip-rollout", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--publish", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv or [])
    if args.publish is not None:
        publish(args.publish, args.messages, DEVICES)
        return {}
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-fleet-"))
    load = os.getloadavg()[0]
    result: dict[str, Any] = {"load_average_at_start": load}
    rows = [f"| machine load average (1 min) at start | {load:.1f} on {os.cpu_count()} cores |"]
    try:
        if not args.skip_ingest:
            print("ingest vs bare paho …", file=sys.stderr)
            ing = result["ingest"] = bench_ingest(args.messages, args.rounds, work)
            al, ss = ing["alone"], ing["same_stream"]
            rows += [
                f"| same stream, both consumers at once: bare paho (median of {args.rounds}) | "
                f"{ss['bare_rate_per_s']:,.0f} msg/s |",
                f"| same stream, both consumers at once: fleet ingest → SQLite | {ss['ingest_rate_per_s']:,.0f} msg/s |",
                f"| ingest / bare, same stream (the claim, ≥ 80%) | {ss['ratio']:.0%} |",
                f"| alternating rounds, each consumer alone: bare / ingest | {al['bare_rate_per_s']:,.0f} / "
                f"{al['ingest_rate_per_s']:,.0f} msg/s ({al['ratio']:.0%}; bounded by the publisher process, "
                "which shares the 2 cores) |",
                f"| ingest loss at QoS 1 ({args.messages:,} msgs, {DEVICES} devices) | {ing['ingest_lost']} lost, "
                f"{ing['ingest_duplicate_rows']} duplicate rows |",
                f"| ingest claim | {'PASS' if ing['pass'] else 'FAIL'} |",
            ]
        if not args.skip_rollout:
            print(f"rollout to {args.devices} simulated agents …", file=sys.stderr)
            ro = result["rollout"] = bench_rollout(args.devices, args.soak, work)
            rows += [
                f"| rollout 1,10,50,100 to {ro['devices']} simulated agents, soak {ro['soak_s']:g}s/wave | "
                f"{ro['state']} in {ro['elapsed_s']:.1f}s (budget {ro['budget_s']:.0f}s), "
                f"{ro['installed']} installed, {ro['failed']} failed |",
                f"| rollout claim | {'PASS' if ro['pass'] else 'FAIL'} |",
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = "| figure | value |\n|---|---|\n" + "\n".join(rows)
    write_result("fleet", result, table)
    print(table)
    result["pass"] = all(v.get("pass") for v in result.values() if isinstance(v, dict))
    return result


if __name__ == "__main__":
    res = main(sys.argv[1:])
    sys.exit(0 if res.get("pass", True) else 3)

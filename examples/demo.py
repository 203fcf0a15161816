"""The README's main command (``make demo``): the whole edgekit flow on embedded defaults, end to end.

Predictive maintenance on a (simulated) fleet of pumps, in one process tree on this machine:

1. train the "cloud" teacher, a 1-D CNN bearing-fault classifier (``examples/predictive_maintenance``);
2. compress it with ``edgekit compress`` for ``x86-avx2`` and ``raspberry-pi-5`` (distil → ONNX → INT8,
   signed bundles with reports);
3. start the fleet in a box (``edgekit fleet up``: SQLite, embedded MQTT broker, API + dashboard,
   Iceberg sync) and local device agents (``edgekit agent run --mqtt``), each a child process on free ports;
4. push the bundle, roll it out in health-gated waves, and send inference requests to the agents over
   the Open Inference Protocol v2 while it rolls out;
5. stream the held-out "field" set (speeds never seen in training, a noisier sensor) so drift shows in
   the devices' telemetry, then run the analysis on the fleet's Iceberg tables (PNG plots);
6. print where to look: dashboard URL and token, compression reports, plots.

Everything lands in ``demo-out/`` (``--out``). A re-run reuses the trained teacher and the compression
cache and starts a fresh fleet. Every child runs in its own process group and is stopped on exit,
Ctrl-C or SIGTERM. ``--quick`` shrinks every stage (the test suite runs it); ``--serve`` keeps the
fleet and agents up at the end until Ctrl-C so the dashboard can be browsed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make ``examples.predictive_maintenance`` importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
DEVICE_PREFIX = "pump"
TARGETS = ("x86-avx2", "raspberry-pi-5")


class DemoError(Exception):
    """A stage failed; the message says which and where its log is."""


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, *, interval: float = 0.5,
             proc: Child | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail clearly on timeout or a dead child."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.popen.poll() is not None:
            raise DemoError(f"{proc.name} exited with code {proc.popen.returncode} while waiting for {what}; "
                            f"log: {proc.log}\n{proc.tail()}")
        try:
            value = check()
        except Exception:  # noqa: BLE001 - not ready yet (connection refused, 404 ...)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; log: {proc.log}\n{proc.tail()}" if proc else ""
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Children:
    """Long-running children, each in its own process group; stopped in reverse start order."""

    log_dir: Path
    running: list[Child] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        child = Child(name, popen, log)
        with self._lock:
            self.running.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        """SIGINT the child's group (graceful: the fleet syncs Iceberg once more), SIGKILL after ``timeout``."""
        p = child.popen
        if p.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with contextlib.suppress(ProcessLookupError, PermissionError):  # helpers it started in its group go too
            os.killpg(p.pid, signal.SIGKILL)
        with self._lock:
            if child in self.running:
                self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


def run_cmd(argv: list[str], *, what: str, log: Path, env: dict[str, str] | None = None,
            timeout: float | None = None) -> str:
    """A short-lived command; its output goes to ``log`` and is returned; failure → :class:`DemoError`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})},
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"{what} took longer than {timeout:.0f} s") from exc
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-12:])
        raise DemoError(f"{what} failed (exit {p.returncode}); log: {log}\n{tail}")
    return p.stdout


def available(command: str) -> bool:
    """Whether this installation provides ``edgekit COMMAND`` (each package contributes its own)."""
    p = subprocess.run([EDGEKIT, *command.split(), "--help"], capture_output=True, text=True, cwd=REPO)
    return p.returncode == 0 and "(unavailable" not in p.stdout


@dataclass(frozen=True)
class Plan:
    """Sizes of every stage (full or ``--quick``)."""

    teacher_args: tuple[str, ...]
    targets: tuple[str, ...]
    devices: int
    rollout_waves: str
    soak: str
    reference_s: float
    field_s: float
    batch: int
    telemetry_s: float
    eval_per_class: int


FULL = Plan(teacher_args=(), targets=TARGETS, devices=3, rollout_waves="34,100", soak="10s",
            reference_s=25.0, field_s=25.0, batch=8, telemetry_s=2.0, eval_per_class=150)
QUICK = Plan(teacher_args=("--quick",), targets=("x86-avx2",), devices=1, rollout_waves="100", soak="2s",
             reference_s=8.0, field_s=8.0, batch=8, telemetry_s=1.0, eval_per_class=20)


class Demo:
    def __init__(self, out: Path, plan: Plan, *, quick: bool):
        self.out, self.plan, self.quick = out, plan, quick
        self.pdm = out / "pdm"
        self.logs = self.pdm / "logs"
        self.children = Children(self.logs)
        self.skipped: list[str] = []
        self.results: dict[str, Any] = {}
        self.fleet_url: str | None = None
        self.admin_token: str | None = None
        self.agents: dict[str, str] = {}  # device id → agent base URL
        self.bundles: dict[str, Path] = {}
        self.background: dict[str, tuple[Child, float]] = {}

    # -- stages --------------------------------------------------------------------------------------
    def keys(self) -> None:
        keys = self.out / "keys"
        if not (keys / "signing.key").exists():
            run_cmd([EDGEKIT, "keys", "generate", "--out", str(keys)], what="edgekit keys generate",
                    log=self.logs / "keys.log")
        self.key, self.pub = keys / "signing.key", keys / "signing.pub"

    def teacher(self) -> None:
        step("train the cloud teacher: a 1-D CNN bearing-fault classifier on simulated vibration")
        out = self.pdm / "teacher"
        argv = [sys.executable, "-u", "-m", "examples.predictive_maintenance.train_teacher", "--out", str(out),
                *self.plan.teacher_args]
        text = run_cmd(argv, what="teacher training", log=self.logs / "teacher.log")
        for line in text.strip().splitlines()[-5:]:
            note(line)
        self.teacher_meta = json.loads((out / "teacher.json").read_text())
        self.results["teacher"] = self.teacher_meta["metrics"]

    def compress(self) -> None:
        """The first target (x86-avx2, deployed here) now; the others in the background while the fleet runs."""
        step(f"compress it with edgekit compress for {', '.join(self.plan.targets)} (distil → ONNX → INT8 → signed bundle)")
        if not available("compress"):
            self.skipped.append("compress: `edgekit compress` is not installed here (pip install 'edgekit[compress]')")
            note("skipped: " + self.skipped[-1])
            return
        first, *rest = self.plan.targets
        t0 = time.monotonic()
        run_cmd(self._compress_argv(first), what=f"edgekit compress ({first})",
                log=self.logs / f"compress-{first}.log")
        self._report_bundle(first, time.monotonic() - t0)
        for target in rest:  # CPU-bound, but it overlaps the fleet stages, which mostly wait
            self.background[target] = (self.children.start(f"compress-{target}", self._compress_argv(target)),
                                       time.monotonic())
            note(f"{target}: compressing in the background (log {self.logs / f'compress-{target}.log'})")

    def _compress_argv(self, target: str) -> list[str]:
        recipe = self.pdm / "teacher" / f"recipe-{target}.yaml"
        return [EDGEKIT, "compress", "--recipe", str(recipe), "--out", str(self.pdm / target), "--key", str(self.key),
                "--cache-dir", str(self.pdm / "compress-cache"), "--quiet"]

    def _report_bundle(self, target: str, seconds: float) -> None:
        out = self.pdm / target
        report = json.loads((out / "report.json").read_text())
        bundle = Path(report["bundle_path"])
        chosen = next(r for r in report["rows"] if r["id"] == report["chosen"])
        m = chosen["metrics"]
        note(f"{target}: {bundle.name}  macro-F1 {m.get(report['metric'], float('nan')):.4f} on validation "
             f"(teacher {report['baseline']:.4f}), p50 {m.get('p50_ms', float('nan')):.3f} ms on this host with the "
             f"profile's settings, {m.get('size_mb', float('nan')):.3f} MB  [{seconds:.0f} s]")
        self.bundles[target] = bundle
        self.results.setdefault("bundles", {})[target] = {"bundle": str(bundle), "report": str(out / "report.md"),
                                                          "metrics": m}

    def finish_background(self) -> None:
        """Wait for the background compressions, then register their bundles with the fleet too."""
        for target, (child, t0) in self.background.items():
            step(f"finish compressing for {target} and register it (ready for a rollout to such devices)")
            try:
                code = child.popen.wait(900)
            except subprocess.TimeoutExpired as exc:
                raise DemoError(f"edgekit compress ({target}) did not finish; log: {child.log}") from exc
            self.children.stop(child)
            if code != 0:
                raise DemoError(f"edgekit compress ({target}) failed (exit {code}); log: {child.log}\n{child.tail()}")
            self._report_bundle(target, time.monotonic() - t0)
            if self.fleet_url:
                text = run_cmd([EDGEKIT, "fleet", "push", str(self.bundles[target])],
                               what=f"edgekit fleet push ({target})", log=self.logs / f"push-{target}.log",
                               env=self.fleet_env)
                note(text.strip())

    def fleet(self) -> None:
        step("start the fleet in a box: edgekit fleet up (SQLite, embedded MQTT broker, API + dashboard, Iceberg sync)")
        if not available("fleet up"):
            self.skipped.append("fleet: `edgekit fleet` is not installed here (pip install 'edgekit[fleet]')")
            note("skipped: " + self.skipped[-1])
            return
        data = self.pdm / "fleet"
        shutil.rmtree(data, ignore_errors=True)  # a fresh fleet each run: the admin token is shown once
        port, broker = free_port(), free_port()
        self.broker_port = broker
        child = self.children.start("fleet", [
            EDGEKIT, "fleet", "up", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port),
            "--broker-port", str(broker), "--trusted-key", str(self.pub)],
            env={"EDGEKIT_ANALYTICS_INTERVAL_S": "3", "EDGEKIT_FLEET_TICK_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1"})
        self.fleet_child = child
        pattern = re.compile(r"admin token \(shown once[^)]*\): (\S+)")
        self.admin_token = wait_for("the fleet's admin token", lambda: (m := pattern.search(child.log.read_text()))
                                    and m.group(1), 90, proc=child)
        self.fleet_url = f"http://127.0.0.1:{port}"
        import httpx

        wait_for("the fleet API", lambda: httpx.get(f"{self.fleet_url}/healthz", timeout=2).status_code == 200, 60,
                 proc=child)
        self.fleet_env = {"EDGEKIT_FLEET_URL": self.fleet_url, "EDGEKIT_FLEET_TOKEN": self.admin_token}
        r = httpx.post(f"{self.fleet_url}/api/v1/tokens", json={"name": "demo-agents", "scope": "read"},
                       headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10)
        if r.status_code != 201:
            raise DemoError(f"creating a read token for the agents failed: {r.status_code} {r.text}")
        self.read_token = r.json()["token"]
        note(f"fleet API + dashboard on {self.fleet_url}, MQTT broker on 127.0.0.1:{broker}")

    def start_agents(self) -> None:
        n = self.plan.devices
        step(f"start {n} device agent(s): edgekit agent run --mqtt (profile x86-avx2, no model yet)")
        if self.fleet_url is None or not available("agent run"):
            self.skipped.append("agents: needs the fleet and `edgekit agent` (pip install 'edgekit[agent]')")
            note("skipped: " + self.skipped[-1])
            return
        import yaml

        for i in range(1, n + 1):
            device = f"{DEVICE_PREFIX}-{i:02d}"
            root = self.pdm / "agents" / device
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            port = free_port()
            config = {
                "state_dir": str(root / "state"),
                "profile": "x86-avx2",
                "runtime_threads": 1,
                "server": {"host": "127.0.0.1", "port": port},
                "mqtt": {"url": f"mqtt://127.0.0.1:{self.broker_port}", "device_id": device,
                         "telemetry_interval_s": self.plan.telemetry_s, "tags": ["demo", f"line-{1 + (i - 1) % 2}"]},
                "ota": {"trusted_keys": [str(self.pub)], "headers": {"Authorization": f"Bearer {self.read_token}"},
                        "allowed_url_prefixes": [self.fleet_url], "soak_s": 3.0, "retry_min_s": 1.0},
            }
            (root / "agent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            child = self.children.start(device, [EDGEKIT, "agent", "run", "--config", str(root / "agent.yaml")],
                                        env={"PYTHONUNBUFFERED": "1"})
            self.agents[device] = f"http://127.0.0.1:{port}"
            setattr(self, f"_child_{device}", child)
        import httpx

        for device, url in self.agents.items():
            wait_for(f"{device} to answer /v2/health/live",
                     lambda url=url: httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200, 60,
                     proc=getattr(self, f"_child_{device}"))

        def online() -> bool:
            r = httpx.get(f"{self.fleet_url}/api/v1/devices", headers=self._auth(), timeout=5)
            return r.status_code == 200 and sum(d["online"] for d in r.json() if d["id"] in self.agents) == n

        wait_for(f"{n} device(s) online in the fleet", online, 60, proc=self.fleet_child)
        note(f"online: {', '.join(f'{d} ({u})' for d, u in self.agents.items())}")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def push(self) -> None:
        step("push the signed bundle to the fleet registry (verified against the trusted key on upload)")
        if self.fleet_url is None or not self.bundles:
            self.skipped.append("push: needs the fleet and a compressed bundle")
            note("skipped: " + self.skipped[-1])
            return
        for target, bundle in self.bundles.items():
            text = run_cmd([EDGEKIT, "fleet", "push", str(bundle)], what=f"edgekit fleet push ({target})",
                           log=self.logs / f"push-{target}.log", env=self.fleet_env)
            note(text.strip())

    def rollout(self, traffic: Traffic) -> None:
        target = "x86-avx2"
        if not self.agents or target not in self.bundles:
            self.skipped.append("rollout: needs agents and the x86-avx2 bundle")
            note("skipped: " + self.skipped[-1])
            return
        manifest_name = self._bundle_name(self.bundles[target])
        step(f"roll {manifest_name} out to tag=demo in waves {self.plan.rollout_waves}% "
             f"(soak {self.plan.soak}, gated on live telemetry) while the devices serve requests")
        text = run_cmd([EDGEKIT, "fleet", "rollout", "create", "--bundle", manifest_name, "--selector", "tag=demo",
                        "--waves", self.plan.rollout_waves, "--soak", self.plan.soak, "--install-timeout", "300s",
                        "--json"], what="edgekit fleet rollout create", log=self.logs / "rollout.log", env=self.fleet_env)
        rollout_id = json.loads(text)["id"]
        traffic.start(self.agents, self.model_name, phase="reference")
        import httpx

        def done() -> dict | None:
            st = httpx.get(f"{self.fleet_url}/api/v1/rollouts/{rollout_id}", headers=self._auth(), timeout=5).json()
            return st if st["state"] in ("completed", "halted", "aborted") else None

        st = wait_for(f"rollout {rollout_id} to finish", done, 300, interval=1.0, proc=self.fleet_child)
        for w in st["waves"]:
            gate = w.get("gate") or {}
            verdict = "pass" if gate.get("passed") else "FAIL: " + "; ".join(gate.get("reasons", []))
            note(f"wave {w['index'] + 1} ({w['percent']:g}%): {w['installed']}/{w['devices']} installed, gate {verdict}")
        if st["state"] != "completed":
            raise DemoError(f"rollout {rollout_id} ended {st['state']}: {st.get('reason')}")
        note(f"rollout {rollout_id} completed: every demo device serves {manifest_name}")
        self.results["rollout"] = {"id": rollout_id, "state": st["state"]}

    def _bundle_name(self, bundle: Path) -> str:
        from edgekit.bundle import read_manifest

        m = read_manifest(bundle)
        self.model_name = m.name
        return f"{m.name}@{m.version}"

    def analysis(self) -> None:
        step("analyse the fleet's Iceberg tables like an analytics team would (pyiceberg → PNG per device)")
        if self.fleet_url is None:
            self.skipped.append("analysis: needs the fleet")
            note("skipped: " + self.skipped[-1])
            return
        from examples.predictive_maintenance import analysis

        data = self.pdm / "fleet"

        def synced() -> bool:
            telemetry, _ = analysis.load_tables(data)
            latest = {}
            for r in telemetry:
                latest[r["device_id"]] = max(latest.get(r["device_id"], r["ts"]), r["ts"])
            return bool(latest) and all(ts.timestamp() >= self.traffic_end for ts in latest.values())

        wait_for("the Iceberg sync to catch up with the field stream", synced, 90, interval=2.0, proc=self.fleet_child)
        out = self.pdm / "analysis"
        result = analysis.main(["--fleet-data", str(data), "--out", str(out)])
        self.results["analysis"] = {"plots": result["plots"], "summary": str(out / "summary.json")}

    # -- the whole flow ------------------------------------------------------------------------------
    def run(self) -> None:
        t0 = time.monotonic()
        self.pdm.mkdir(parents=True, exist_ok=True)
        self.keys()
        self.teacher()
        self.compress()
        self.fleet()
        self.start_agents()
        self.push()
        traffic = Traffic(self.plan)
        try:
            self.rollout(traffic)
            if traffic.running:
                wait_for("some reference traffic", lambda: traffic.sent >= len(self.agents) * self.plan.batch, 60)
                time.sleep(self.plan.reference_s)
                step(f"stream the held-out field set ({self.plan.field_s:.0f} s): speeds never seen in training, "
                     "a noisier sensor, heavier load")
                traffic.switch("field")
                time.sleep(self.plan.field_s)
        finally:
            traffic.stop()
        self.traffic_end = time.time() + 2 * self.plan.telemetry_s
        if traffic.scores:
            self.results["served"] = traffic.scores
            for phase, s in traffic.scores.items():
                note(f"{phase}: {s['windows']} windows served by the agents, macro-F1 {s['macro_f1']:.4f} "
                     f"(errors {s['errors']})")
            teacher_field = self.teacher_meta["metrics"]["field"]["macro_f1"]
            if "field" in traffic.scores and teacher_field > 0:
                kept = traffic.scores["field"]["macro_f1"] / teacher_field
                note(f"served field windows: macro-F1 {kept:.1%} of the teacher's on the whole field set "
                     f"({teacher_field:.4f}); python -m hil.bench_pdm measures both on the same windows")
                self.results["field_f1_kept"] = kept
        self.finish_background()
        if traffic.sent:
            time.sleep(2 * self.plan.telemetry_s + 1)  # let the last telemetry interval reach the fleet
            self.analysis()
        self.results["seconds"] = round(time.monotonic() - t0, 1)
        (self.pdm / "results.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        self.where_to_look()

    def where_to_look(self) -> None:
        step(f"done in {self.results['seconds']:.0f} s: where to look")
        if self.fleet_url:
            note(f"dashboard:   {self.fleet_url}  (admin token: {self.admin_token})")
            note(f"             live until the demo exits (--serve keeps it up); later: edgekit fleet up --data-dir "
                 f"{self.pdm / 'fleet'} --trusted-key {self.pub} (same token)")
        note(f"teacher:     {self.pdm / 'teacher' / 'teacher.json'}")
        for target, info in self.results.get("bundles", {}).items():
            note(f"{target + ':':12s} {info['bundle']}  report {info['report']} (+ report.png)")
        for p in self.results.get("analysis", {}).get("plots", []):
            note(f"plot:        {p}")
        note(f"logs:        {self.logs}/   results: {self.pdm / 'results.json'}")
        for s in self.skipped:
            note(f"skipped:     {s}")


class Traffic:
    """Sends windows to every agent over v2 HTTP from one thread; scores what comes back."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.phase = "reference"
        self.sent = 0
        self.scores: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple[list[int], list[int], int]] = {}
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _data(self, split: str):
        from examples.predictive_maintenance.data import make_split, model_inputs

        ds = make_split(split, self.plan.eval_per_class)
        return model_inputs(ds.x, ds.speed_rpm), ds.y

    def start(self, agents: dict[str, str], model: str, phase: str) -> None:
        self.phase = phase
        self._sets = {"reference": self._data("val"), "field": self._data("field")}
        self._thread = threading.Thread(target=self._run, args=(dict(agents), model), name="demo-traffic", daemon=True)
        self._thread.start()

    def switch(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        from examples.predictive_maintenance.model import macro_f1

        for phase, (ys, preds, errors) in self._seen.items():
            if ys:
                one_hot = np.eye(6)[np.asarray(preds)]
                self.scores[phase] = {"windows": len(ys), "errors": errors,
                                      "macro_f1": macro_f1({"p": one_hot}, np.asarray(ys))}

    def _run(self, agents: dict[str, str], model: str) -> None:
        import httpx

        from examples.predictive_maintenance.infer import v2_request

        cursor = {"reference": 0, "field": 0}
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                served_any = False
                for url in agents.values():
                    phase = self.phase
                    inputs, labels = self._sets[phase]
                    n = len(labels)
                    i = cursor[phase] % n
                    idx = np.arange(i, i + self.plan.batch) % n
                    cursor[phase] += self.plan.batch
                    body = v2_request({k: v[idx] for k, v in inputs.items()})
                    try:
                        r = http.post(f"{url}/v2/models/{model}/infer", json=body)
                    except httpx.HTTPError:
                        continue
                    if r.status_code in (404, 503):  # this device does not serve the model yet
                        continue
                    ys, preds, errors = self._seen.setdefault(phase, ([], [], 0))
                    if r.status_code != 200:
                        self._seen[phase] = (ys, preds, errors + 1)
                        continue
                    out = r.json()["outputs"][0]
                    logits = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
                    ys.extend(labels[idx].tolist())
                    preds.extend(logits.argmax(1).tolist())
                    self.sent += len(idx)
                    served_any = True
                time.sleep(0.05 if served_any else 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="edgekit end to end: predictive maintenance on a local fleet.")
    ap.add_argument("--out", type=Path, default=REPO / "demo-out", help="where everything is written (demo-out/)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere (the test suite runs this)")
    ap.add_argument("--serve", action="store_true", help="keep the fleet and agents running at the end until Ctrl-C")
    args = ap.parse_args(argv)
    demo = Demo(args.out.resolve(), QUICK if args.quick else FULL, quick=args.quick)

    def _terminate(signum, frame):  # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below cleans up
        raise KeyboardInterrupt

    # Ctrl-C must work even when a parent started us with SIGINT ignored (background jobs of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _terminate)
    atexit.register(demo.children.stop_all)
    serving = False
    try:
        demo.run()
        if args.serve and demo.children.running:
            serving = True
            print(f"\nserving: dashboard {demo.fleet_url} (token {demo.admin_token}); Ctrl-C stops everything", flush=True)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        print("\nstopping everything the demo started" if serving else
              "\ninterrupted: stopping everything the demo started", file=sys.stderr, flush=True)
        return 0 if serving else 130
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the clean-up
        demo.children.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())

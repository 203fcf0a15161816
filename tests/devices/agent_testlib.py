"""Helpers of the agent's tests (a uniquely named module: ``conftest`` is a name every test folder shares).

Bundles of a tiny ONNX classifier (built with the onnx helper API, no torch), a local HTTP file server for
OTA downloads, desired-state payloads, an MQTT recorder, and ``wait_for``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx_models import tiny_cnn_onnx


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_onnx(path: Path, seed: int = 0) -> Path:
    """The tiny CNN of tests/onnx_models.py with seeded weights."""
    return tiny_cnn_onnx(path, seed)


def make_bundle(out: Path, key, *, version: str = "1.0.0", seed: int = 0, name: str = "tiny",
                golden_shift: float = 0.0) -> Path:
    """A signed bundle; ``golden_shift`` corrupts the golden outputs so the post-install check fails."""
    from edgekit.bundle import GoldenSet, create_bundle, file_sha256
    from runtimes.ort import OnnxRuntime

    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = make_onnx(out.with_suffix(".onnx"), seed)
    x = np.random.default_rng(100 + seed).standard_normal((8, 1, 8, 8)).astype(np.float32)
    with OnnxRuntime().load(onnx_path, threads=1) as s:
        y = s.run({"image": x})["logits"]
    golden = GoldenSet(inputs={"image": x}, outputs={"logits": y + golden_shift}, labels=y.argmax(axis=1))
    manifest = {
        "schema": 1, "name": name, "version": version, "task": "classification",
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}],
        "labels": ["a", "b", "c"],
        "tolerance": {"atol": 1e-3, "rtol": 1e-3, "min_golden_accuracy": 0.9},
        "lineage": {"source_model_sha256": file_sha256(onnx_path)},
        "files": {},
    }
    create_bundle(out, manifest, {"model.onnx": onnx_path, "golden.npz": golden.to_npz_bytes()}, key)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class FileServer:
    """Serves a folder over plain HTTP on a free loopback port."""

    def __init__(self, root: Path):
        self.root = Path(root)
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def desired_for(device_id: str, bundle: Path, url: str, *, rollout_id: str = "r1", generation: int = 1,
                name: str = "tiny", version: str | None = None) -> bytes:
    version = version or bundle.stem.split("-", 1)[1]
    return json.dumps({
        "v": 1, "device_id": device_id, "rollout_id": rollout_id, "generation": generation,
        "bundle": {"name": name, "version": version, "url": url, "sha256": sha256(bundle),
                   "size": bundle.stat().st_size},
    }).encode()


class MqttRecorder:
    """Subscribes to a device's topics on a real broker and records every message in arrival order."""

    def __init__(self, broker, device_id: str, *, persistent: bool = False):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict | None, bool]] = []
        self._lock = threading.Lock()
        self.device_id = device_id
        # persistent: a durable session (broker-side queue) so nothing is missed across broker restarts
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{device_id}-{time.monotonic_ns()}",
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"edgekit/v1/{device_id}/#", qos=1)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._subscribed.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            data = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            data = None
        with self._lock:
            self.messages.append((msg.topic.rsplit("/", 1)[1], data, bool(msg.retain)))

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            return [m for k, m, _ in self.messages if k == kind and m is not None]

    def seqs(self) -> list[int]:
        """``seq`` of telemetry and events in arrival order (one per-device counter covers both)."""
        with self._lock:
            return [m["seq"] for k, m, _ in self.messages if k in ("telemetry", "events") and m is not None]

    def events(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.of("events") if kind is None or e["kind"] == kind]

    def publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"edgekit/v1/{self.device_id}/{kind}", payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

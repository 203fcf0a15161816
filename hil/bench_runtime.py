"""``edgekit bench`` vs a plain ``onnxruntime.InferenceSession.run`` loop on the same small CNN.

Claim (issue: foundation): the figures ``edgekit bench`` reports are within 15% of a raw
``session.run`` loop over the same model, same threads, same run. The two are measured in alternating
rounds so drift of this shared machine hits both alike; the ratio of medians is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hil.report import write_result

ROUNDS = 5
ITERS = 2000
THREADS = 2


def small_cnn_onnx(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    torch.onnx.export(
        model, (torch.randn(1, 1, 32, 32),), str(path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )


def raw_loop(onnx_path: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    for _ in range(100):
        s.run(None, {"image": x})
    times = np.empty(ITERS)
    for i in range(ITERS):
        t0 = time.perf_counter_ns()
        s.run(None, {"image": x})
        times[i] = (time.perf_counter_ns() - t0) / 1e6
    return float(np.median(times))


def cli_bench(bundle: Path, pub: Path) -> dict:
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    out = subprocess.run(
        [edgekit, "bench", str(bundle), "--json", "--threads", str(THREADS), "--iterations", str(ITERS),
         "--warmup", "100", "--key", str(pub)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def main() -> dict:
    from edgekit.bundle import GoldenSet
    from edgekit.signing import generate_keypair, load_signing_key
    from runtimes.packaging import bundle_from_onnx

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "cnn.onnx"
        small_cnn_onnx(onnx_path)
        priv, pub = generate_keypair(tmp / "keys")
        x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
        golden_in = tmp / "g.npz"
        golden_in.write_bytes(GoldenSet(inputs={"image": x}, outputs={}).to_npz_bytes())
        bundle = tmp / "cnn-1.ekb"
        bundle_from_onnx(onnx_path, name="cnn", version="1", key=load_signing_key(priv), out=bundle, golden_npz=golden_in)
        raw, cli = [], []
        for _ in range(ROUNDS):
            raw.append(raw_loop(onnx_path, x))
            cli.append(cli_bench(bundle, pub)["p50_ms"])
    raw_p50, cli_p50 = float(np.median(raw)), float(np.median(cli))
    ratio = cli_p50 / raw_p50
    ok = abs(ratio - 1) <= 0.15
    result = {
        "raw_session_run_p50_ms": raw_p50, "edgekit_bench_p50_ms": cli_p50, "ratio": ratio,
        "rounds": ROUNDS, "iterations": ITERS, "threads": THREADS, "target": "within 15%", "pass": ok,
    }
    table = (
        "| measurement | p50 (ms) |\n|---|---|\n"
        f"| raw `InferenceSession.run` loop | {raw_p50:.4f} |\n| `edgekit bench` | {cli_p50:.4f} |\n\n"
        f"ratio edgekit/raw = **{ratio:.3f}** (target 0.85–1.15): {'PASS' if ok else 'FAIL'}"
    )
    write_result("runtime", result, table)
    print(table)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["pass"] else 1)

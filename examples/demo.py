"""The README's main command (``make demo``): the edgekit flow end to end on embedded defaults.

Today: train a small CNN on scikit-learn's handwritten digits, export it to ONNX, package it as a
signed bundle (with real golden samples and labels), verify it, and benchmark it with ``edgekit
bench``. Everything lands in ``demo-out/``. No external services, no downloads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "demo-out"
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def edgekit(*args: str) -> str:
    p = subprocess.run([EDGEKIT, *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"edgekit {' '.join(args)} failed:\n{p.stderr}")
    return p.stdout


def train_small_cnn():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _epoch in range(15):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
    return model, xte, yte, float(acc)


def main() -> None:
    t0 = time.time()
    OUT.mkdir(exist_ok=True)
    step("train a small CNN on scikit-learn's handwritten digits")
    model, xte, yte, acc = train_small_cnn()
    print(f"held-out accuracy {acc:.4f}")

    step("export to ONNX (opset 17, dynamic batch)")
    import torch

    onnx_path = OUT / "digits-small.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(xte[:1]),), str(onnx_path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )

    step("sign it as a bundle with real golden samples")
    if not (OUT / "keys/signing.key").exists():
        edgekit("keys", "generate", "--out", str(OUT / "keys"))
    golden = OUT / "golden-in.npz"
    np.savez(golden, **{"input:image": xte[:16], "labels": yte[:16]})
    bundle = OUT / "digits-small-1.0.0.ekb"
    print(edgekit("bundle", "create", "--onnx", str(onnx_path), "--name", "digits-small", "--version", "1.0.0",
                  "--key", str(OUT / "keys/signing.key"), "--out", str(bundle), "--golden", str(golden),
                  "--labels", ",".join(str(i) for i in range(10))).strip())
    print(edgekit("bundle", "verify", str(bundle), "--key", str(OUT / "keys/signing.pub")).strip())

    step("benchmark it on this host (ONNX Runtime, batch 1)")
    res = json.loads(edgekit("bench", str(bundle), "--json", "--key", str(OUT / "keys/signing.pub")))
    print(f"p50 {res['p50_ms']:.3f} ms · p95 {res['p95_ms']:.3f} ms · p99 {res['p99_ms']:.3f} ms · "
          f"{res['throughput_per_s']:.0f} inferences/s on {res['runtime']}")
    (OUT / "bench.json").write_text(json.dumps(res, indent=2))

    step(f"done in {time.time() - t0:.0f} s — artifacts in {OUT}")


if __name__ == "__main__":
    main()

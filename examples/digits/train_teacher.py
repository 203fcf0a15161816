"""Train the digits "cloud" teacher: a ResNet-style CNN (~1.9M parameters) on scikit-learn's digits.

Digits (8×8, 0..16) are upsampled to 32×32 and scaled to [0, 1]; 20% is held out (stratified, seed 0)
and never trained on. Deterministic (seeded, single-threaded data order); a few CPU minutes. Writes
into ``--out`` (default ``examples/digits/build``):

* ``teacher.pt``   the state dict (load with ``torch.load(weights_only=True)``)
* ``model.py``     the factories (``model:resnet_teacher``, ``model:student``)
* ``digits.npz``   ``x``/``y`` (training) and ``x_val``/``y_val`` (held out)
* ``recipe.yaml``  the example recipe, ready for ``edgekit compress --recipe``

    python examples/digits/train_teacher.py && edgekit compress --recipe examples/digits/build/recipe.yaml --out out/digits
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def load_digits_32(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    y = d.target.astype(np.int64)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, y_tr, x_val, y_val


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    out = torch.empty_like(x)
    shifts = torch.randint(-2, 3, (x.shape[0], 2), generator=gen)
    for i in range(x.shape[0]):
        out[i] = torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "build")
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from model import resnet_teacher

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_tr, y_tr, x_val, y_val = load_digits_32(args.seed)
    model = resnet_teacher()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"teacher: {n_params / 1e6:.2f}M parameters; {len(x_tr)} training, {len(x_val)} held-out samples")

    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(args.seed)
    bs = 64
    steps = args.epochs * ((len(xt) + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(_shift(xt[idx], gen)), yt[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(xt):.4f}, held-out accuracy {acc:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "teacher.pt")
    np.savez_compressed(args.out / "digits.npz", x=x_tr, y=y_tr, x_val=x_val, y_val=y_val)
    shutil.copyfile(HERE / "model.py", args.out / "model.py")
    shutil.copyfile(HERE / "recipe.yaml", args.out / "recipe.yaml")
    (args.out / "teacher.json").write_text(json.dumps(
        {"params": n_params, "heldout_accuracy": acc, "epochs": args.epochs, "seed": args.seed,
         "train_s": round(time.time() - t0, 1)}, indent=2))
    print(f"held-out accuracy {acc:.4f}; wrote {args.out}/teacher.pt, model.py, digits.npz, recipe.yaml")
    if acc < 0.99:
        print("warning: held-out accuracy below 0.99", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the "cloud" teacher: a 1-D CNN bearing-fault classifier, on CPU in a couple of minutes.

    python -m examples.predictive_maintenance.train_teacher --out demo-out/pdm/teacher

Writes into ``OUT`` everything ``edgekit compress`` needs, self-contained:

* ``teacher.pt``   the state dict (load with ``torch.load(weights_only=True)``)
* ``teacher.json`` factory, kwargs, input specs, class names, macro-F1 on the validation and field sets
* ``model.py``     a copy of the factory and the ``macro_f1`` metric (recipes say ``model:bearing_cnn``)
* ``pdm.npz``      the model inputs of the training and validation splits (``NAME`` / ``NAME_val``, ``y``)
* ``recipe-x86-avx2.yaml``, ``recipe-raspberry-pi-5.yaml``  ready for ``edgekit compress --recipe``

A second run with the same arguments reuses the result unless ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make ``examples.predictive_maintenance`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.predictive_maintenance.data import CLASSES, FEATURES, ORDERS, make_split, model_inputs  # noqa: E402

__all__ = ["FACTORY", "TeacherResult", "evaluate", "input_specs", "load_teacher", "main", "render_recipe",
           "split_inputs", "train"]

FACTORY = "examples.predictive_maintenance.model:bearing_cnn"
HERE = Path(__file__).resolve().parent
RECIPES = ("recipe-x86-avx2.yaml", "recipe-raspberry-pi-5.yaml")


def input_specs() -> list[dict]:
    """The teacher's inputs as ``edgekit.manifest.TensorSpec`` dicts (symbolic batch)."""
    return [{"name": "spectrum", "dtype": "float32", "shape": ["batch", 2, len(ORDERS)]}] + [
        {"name": f, "dtype": "float32", "shape": ["batch", 1]} for f in FEATURES
    ]


def _tensors(inputs: dict[str, np.ndarray]):
    import torch

    from examples.predictive_maintenance.model import INPUT_NAMES

    return [torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in INPUT_NAMES]


def predict(model, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Class logits of ``model`` (eval mode) for named inputs, batched."""
    import torch

    model.eval()
    n = len(inputs["spectrum"])
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            out.append(model(*_tensors({k: v[i : i + batch] for k, v in inputs.items()})).numpy())
    return np.concatenate(out)


def evaluate(model, inputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Macro-F1 and accuracy of ``model`` on named inputs."""
    from examples.predictive_maintenance.model import macro_f1

    logits = predict(model, inputs)
    return {"macro_f1": macro_f1({"logits": logits}, labels), "accuracy": float((logits.argmax(1) == labels).mean())}


def split_inputs(split: str, per_class: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A split's model inputs (what a device computes) and labels."""
    ds = make_split(split, per_class)
    return model_inputs(ds.x, ds.speed_rpm), ds.y


def _augment(batch: list, gen) -> list:
    """Random gain (sensor sensitivity, mounting): shifts the log spectra and scales the level features."""
    import torch

    log_gain = torch.rand(batch[0].shape[0], 1, generator=gen) * 0.6 - 0.3
    gain = torch.exp(log_gain)
    out = list(batch)
    out[0] = batch[0] + log_gain[:, :, None]  # log1p(a/1e-3) ≈ log(a) + const for the lines that matter
    for i, name in enumerate(FEATURES, start=1):
        if name in ("rms", "band_low", "band_mid", "band_high"):
            out[i] = batch[i] * gain
    return out


def train(inputs: dict[str, np.ndarray], labels: np.ndarray, *, width: int = 64, epochs: int = 8, seed: int = 0,
          lr: float = 3e-3, batch_size: int = 64, log=print):
    """Train a teacher from scratch on named model inputs; returns the model in eval mode."""
    import torch
    import torch.nn.functional as F

    from examples.predictive_maintenance.model import bearing_cnn

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xs = _tensors(inputs)
    y = torch.from_numpy(labels)
    model = bearing_cnn(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        t0, total = time.time(), 0.0
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            batch = _augment([t[idx] for t in xs], gen)
            opt.zero_grad()
            loss = F.cross_entropy(model(*batch), y[idx], label_smoothing=0.05)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(y):.4f} ({time.time() - t0:.1f} s)")
    return model.eval()


class TeacherResult(dict):
    """``teacher.json`` as a dict: factory, kwargs, inputs, outputs, labels, metrics, weights."""


def load_teacher(out: Path):
    """Rebuild the trained teacher from ``OUT/teacher.pt`` + ``OUT/teacher.json`` (no pickle)."""
    import torch

    from examples.predictive_maintenance.model import bearing_cnn

    meta = json.loads((Path(out) / "teacher.json").read_text())
    model = bearing_cnn(**meta["kwargs"])
    model.load_state_dict(torch.load(Path(out) / "teacher.pt", map_location="cpu", weights_only=True))
    return model.eval(), TeacherResult(meta)


def render_recipe(text: str, *, width: int, quick: bool = False) -> str:
    """A recipe template for this teacher: its width; ``quick`` shortens distillation and timing (tests)."""
    # the teacher's kwargs line only (``^  kwargs:``), not the student's ``student_kwargs``
    text = re.sub(r"^(\s+)kwargs: \{width: \d+\}", rf"\g<1>kwargs: {{width: {width}}}", text, flags=re.M)
    if quick:
        text = re.sub(r"(student_kwargs: \{width: )\d+", r"\g<1>8", text)
        text = re.sub(r"epochs: \d+", "epochs: 2", text)
        text = re.sub(r"evaluate: \{iterations: \d+\}", "evaluate: {iterations: 30}", text)
        # a smoke-test teacher is barely trained: check the pipeline, not the quality
        text = re.sub(r"budget: \{max_accuracy_drop: [\d.]+\}", "budget: {max_accuracy_drop: 100}", text)
    return text


def _write_companions(out: Path, *, width: int, quick: bool) -> None:
    """``model.py`` and the recipes next to the weights, so ``edgekit compress --recipe`` finds everything."""
    shutil.copyfile(HERE / "model.py", out / "model.py")
    for name in RECIPES:
        (out / name).write_text(render_recipe((HERE / name).read_text(), width=width, quick=quick))


def _settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> TeacherResult:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-out/pdm/teacher"), help="output folder")
    ap.add_argument("--width", type=int, default=None, help="channel width of the CNN (teacher: 64)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    ap.add_argument("--per-class", type=int, default=None, help="training windows per class (default: 500)")
    ap.add_argument("--eval-per-class", type=int, default=None, help="validation/field windows per class")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny teacher and short recipes, for smoke tests (not a useful model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--force", action="store_true", help="retrain even if OUT holds a teacher with these settings")
    args = ap.parse_args(argv)
    quick = {"width": 16, "epochs": 2, "per_class": 40, "eval_per_class": 20} if args.quick else {}
    for name, default in (("width", 64), ("epochs", 8), ("per_class", None), ("eval_per_class", None)):
        if getattr(args, name) is None:
            setattr(args, name, quick.get(name, default))
    for name in ("width", "epochs", "per_class", "eval_per_class"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"width": args.width, "epochs": args.epochs, "per_class": args.per_class,
                "eval_per_class": args.eval_per_class, "seed": args.seed, "quick": args.quick}
    out: Path = args.out
    meta_path = out / "teacher.json"
    done = all((out / f).is_file() for f in ("teacher.pt", "pdm.npz"))
    if not args.force and meta_path.is_file() and done:
        meta = json.loads(meta_path.read_text())
        if meta.get("settings_sha") == _settings_hash(settings):
            _write_companions(out, width=args.width, quick=args.quick)  # cheap: keeps them current
            print(f"teacher already trained in {out} (macro-F1 val {meta['metrics']['val']['macro_f1']:.4f}, "
                  f"field {meta['metrics']['field']['macro_f1']:.4f}); --force retrains")
            return TeacherResult(meta)

    t0 = time.time()
    train_x, train_y = split_inputs("train", args.per_class)
    evals = {s: split_inputs(s, args.eval_per_class) for s in ("val", "field")}
    model = train(train_x, train_y, width=args.width, epochs=args.epochs, seed=args.seed)
    metrics = {s: evaluate(model, *evals[s]) for s in ("val", "field")}
    out.mkdir(parents=True, exist_ok=True)
    val_x, val_y = evals["val"]
    arrays = {**train_x, "y": train_y, **{f"{k}_val": v for k, v in val_x.items()}, "y_val": val_y}
    with open(out / "pdm.npz.tmp", "wb") as fh:
        np.savez(fh, **arrays)
    (out / "pdm.npz.tmp").replace(out / "pdm.npz")
    _write_companions(out, width=args.width, quick=args.quick)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out / "teacher.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "teacher.pt")
    meta = TeacherResult(
        factory=FACTORY, kwargs={"width": args.width}, inputs=input_specs(),
        outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", len(CLASSES)]}],
        labels=list(CLASSES), metrics=metrics, params=sum(p.numel() for p in model.parameters()),
        train_seconds=round(time.time() - t0, 1), settings=settings, settings_sha=_settings_hash(settings),
    )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"teacher: {meta['params']:,} parameters, trained in {meta['train_seconds']:.0f} s")
    for s in ("val", "field"):
        print(f"  {s:5s} macro-F1 {metrics[s]['macro_f1']:.4f}  accuracy {metrics[s]['accuracy']:.4f}")
    print(f"wrote {out}: teacher.pt, teacher.json, model.py, pdm.npz, {', '.join(RECIPES)}")
    return meta


if __name__ == "__main__":
    main()

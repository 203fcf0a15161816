"""Predictive-maintenance benchmark: the compressed bundle against its teacher, measured in one run.

    python -m hil.bench_pdm [--teacher demo-out/pdm/teacher] [--bundle demo-out/pdm/x86-avx2/….ekb]

Claims checked (issue 8): on the held-out **field** set (speeds never seen in training), the bundle keeps
≥ 98 % of the teacher's macro-F1, and at batch 1 it is ≥ 10× faster (p50) than the teacher in PyTorch
eager mode — both on this machine, same thread count (the ``x86-avx2`` profile's), same inputs.
Latency is measured in interleaved rounds (teacher, bundle, teacher, …) and the median of the rounds'
p50s is reported, so load from other processes hits both sides alike. Missing artifacts are built
first (``train_teacher`` and ``edgekit compress`` with the example's recipe). Writes
``bench/pdm.json`` and ``bench/pdm.md`` via :func:`hil.report.write_result`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hil.report import write_result

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = REPO / "demo-out" / "pdm" / "teacher"
DEFAULT_OUT = REPO / "demo-out" / "pdm" / "x86-avx2"
DEFAULT_KEY = REPO / "demo-out" / "keys" / "signing.pub"
PROFILE = "x86-avx2"
MIN_F1_KEPT = 0.98
MIN_SPEEDUP = 10.0


class _EagerSession:
    """The teacher as a ``runtimes`` session: one eager forward per ``run`` (what a PyTorch user runs)."""

    def __init__(self, model, input_names: tuple[str, ...]):
        self.model, self.names = model, input_names

    def run(self, feeds):
        import torch

        with torch.inference_mode():
            out = self.model(*[torch.from_numpy(feeds[n]) for n in self.names])
        return {"logits": out.numpy()}


def _ensure_artifacts(teacher: Path, out: Path, bundle: Path | None) -> Path:
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    if not (teacher / "teacher.json").is_file():
        print(f"no teacher in {teacher}: training it", flush=True)
        subprocess.run([sys.executable, "-m", "examples.predictive_maintenance.train_teacher", "--out", str(teacher)],
                       check=True, cwd=REPO)
    if bundle is not None:
        return bundle
    report = out / "report.json"
    if not report.is_file() or not json.loads(report.read_text()).get("bundle_path"):
        print(f"no bundle in {out}: compressing the teacher for {PROFILE}", flush=True)
        key = DEFAULT_KEY.with_name("signing.key")
        subprocess.run([edgekit, "compress", "--recipe", str(teacher / f"recipe-{PROFILE}.yaml"), "--out", str(out),
                        *(["--key", str(key)] if key.exists() else []), "--quiet"], check=True, cwd=REPO)
    return Path(json.loads(report.read_text())["bundle_path"])


def _predict(run, inputs: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    return np.concatenate([run({k: v[i : i + batch] for k, v in inputs.items()})["logits"]
                           for i in range(0, n, batch)])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="train_teacher output folder")
    ap.add_argument("--bundle", type=Path, default=None, help="the compressed bundle (default: compress one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where a missing bundle is compressed to")
    ap.add_argument("--key", type=Path, default=DEFAULT_KEY,
                    help="trusted public key for the bundle (default: the demo's; without one only hashes are checked)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    ap.add_argument("--iterations", type=int, default=100, help="timed runs per side per round")
    ap.add_argument("--per-class", type=int, default=None, help="field windows per class (default: the split's)")
    args = ap.parse_args(argv if argv is not None else [])
    import torch

    from edgekit.bundle import verify_bundle
    from edgekit.profiles import load_profile
    from edgekit.signing import load_public_keys
    from examples.predictive_maintenance.data import make_split, model_inputs
    from examples.predictive_maintenance.model import INPUT_NAMES, macro_f1
    from examples.predictive_maintenance.train_teacher import load_teacher
    from runtimes.bench import benchmark
    from runtimes.ort import OnnxRuntime

    bundle_path = _ensure_artifacts(args.teacher, args.out, args.bundle)
    profile = load_profile(PROFILE)
    threads = profile.threads
    torch.set_num_threads(threads)
    teacher, meta = load_teacher(args.teacher)
    field = make_split("field", args.per_class)
    inputs = model_inputs(field.x, field.speed_rpm)
    one = {k: np.ascontiguousarray(v[:1]) for k, v in inputs.items()}

    with tempfile.TemporaryDirectory() as tmp:
        keys = load_public_keys([args.key]) if args.key and args.key.exists() else None
        vb = verify_bundle(bundle_path, keys, Path(tmp) / "b", require_signature=keys is not None)
        eager = _EagerSession(teacher, INPUT_NAMES)
        with OnnxRuntime().load(vb.model_path, profile, threads=threads) as session:
            f1_teacher = macro_f1({"logits": _predict(eager.run, inputs)}, field.y)
            f1_bundle = macro_f1({"logits": _predict(session.run, inputs)}, field.y)
            rounds: dict[str, list[float]] = {"teacher": [], "bundle": []}
            for _ in range(args.rounds):
                for name, sess in (("teacher", eager), ("bundle", session)):
                    res = benchmark(sess, one, runtime=name, warmup=10, iterations=args.iterations)
                    rounds[name].append(res.p50_ms)
    p50 = {k: float(np.median(v)) for k, v in rounds.items()}
    speedup = p50["teacher"] / p50["bundle"]
    kept = f1_bundle / f1_teacher if f1_teacher > 0 else 0.0
    teacher_params = sum(p.numel() for p in teacher.parameters())
    result = {
        "teacher": {"params": teacher_params, "field_macro_f1": f1_teacher, "p50_ms_eager": p50["teacher"],
                    "p50_ms_rounds": rounds["teacher"]},
        "bundle": {"path": str(bundle_path), "precision": vb.manifest.precision, "field_macro_f1": f1_bundle,
                   "p50_ms": p50["bundle"], "p50_ms_rounds": rounds["bundle"],
                   "size_bytes": vb.manifest.files["model.onnx"].size},
        "field_windows": int(len(field.y)), "threads": threads, "profile": PROFILE,
        "speedup": speedup, "f1_kept": kept,
        "targets": {"min_speedup": MIN_SPEEDUP, "min_f1_kept": MIN_F1_KEPT},
        "pass": bool(speedup >= MIN_SPEEDUP and kept >= MIN_F1_KEPT),
    }
    table = (
        "| model | field macro-F1 | p50 batch 1 (ms) | ratio |\n|---|---|---|---|\n"
        f"| teacher, PyTorch eager ({teacher_params:,} params) | {f1_teacher:.4f} | {p50['teacher']:.3f} | 1× |\n"
        f"| bundle, ONNX Runtime {vb.manifest.precision} ({PROFILE}) | {f1_bundle:.4f} | {p50['bundle']:.3f} | "
        f"{speedup:.1f}× faster |\n\n"
        f"Field set: {len(field.y)} windows at speeds never seen in training; {threads} threads both sides; "
        f"median of {args.rounds} interleaved rounds × {args.iterations} runs. Bundle keeps {kept:.1%} of the "
        f"teacher's macro-F1 (target ≥ {MIN_F1_KEPT:.0%}), speed-up {speedup:.1f}× (target ≥ {MIN_SPEEDUP:.0f}×): "
        f"**{'PASS' if result['pass'] else 'FAIL'}**."
    )
    path = write_result("pdm", result, table)
    print(table)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    res = main(sys.argv[1:])
    sys.exit(0 if res["pass"] else 1)

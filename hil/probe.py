"""The probe that runs ON the target: verify a bundle, run it on the profile's runtime, measure it.

Self-contained on purpose: it imports only the ``edgekit`` core and ``runtimes`` (never ``hil``,
``devices``, ``fleet`` or torch), so it runs on a device that has only ``edgekit[agent]`` installed.
:mod:`hil.targets` copies this one file to the target and runs it there with the target's Python::

    python3 probe.py --bundle b.ekb [--profile P] [--data d.npz] [--key k.pub] [--iterations N]

It prints exactly one JSON object (a :class:`ProbeResult`) on stdout, also when it fails: then
``ok`` is false and ``error`` says why, so the caller never has to parse a traceback. Exit code 0
when a measurement was made, 2 when it could not be (bad bundle, no runtime, bad data).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import numpy as np
except ImportError:  # reported as a JSON error by main(): the target lacks edgekit and its numpy
    np = None  # type: ignore[assignment]

__all__ = ["MARKER", "accuracy_of", "main", "probe"]

#: the line before the JSON result, so banners printed by a login shell never confuse the parser
MARKER = "EDGEKIT-HIL-RESULT"


def _predictions(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    first = next(iter(outputs.values()))
    if first.ndim != 2 or first.shape[1] < 2:
        return None
    return first.argmax(axis=1)


def accuracy_of(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first output against integer labels (None when not a classifier)."""
    if labels is None:
        return None
    pred = _predictions(outputs)
    labels = np.asarray(labels).reshape(-1)
    if pred is None or pred.shape[0] != labels.shape[0]:
        return None
    return float((pred == labels).mean())


def _run_batched(session, inputs: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    n = int(next(iter(inputs.values())).shape[0])
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        feeds = {k: np.ascontiguousarray(v[start : start + batch]) for k, v in inputs.items()}
        for k, v in session.run(feeds).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def _golden_parity(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float, rtol: float) -> dict:
    worst, ok = 0.0, True
    for name, exp in expected.items():
        got = outputs.get(name)
        if got is None or got.shape != exp.shape:
            return {"passed": False, "max_abs_error": None, "reason": f"output {name!r} missing or wrong shape"}
        diff = np.abs(got.astype(np.float64) - exp.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        ok = ok and bool(np.allclose(got, exp, atol=atol, rtol=rtol))
    return {"passed": ok, "max_abs_error": worst}


def _load_data(path: Path, manifest) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Evaluation data: a golden-style ``.npz`` (``input:NAME``/``labels``) or plain ``x``/``y`` arrays."""
    from edgekit.errors import ConfigError

    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if any(f.startswith("input:") for f in files):
                inputs = {f.split(":", 1)[1]: z[f] for f in files if f.startswith("input:")}
                labels = z["labels"] if "labels" in files else None
            elif "x" in files:
                inputs = {manifest.inputs[0].name: z["x"]}
                labels = z["y"] if "y" in files else None
            else:
                raise ConfigError(f"{path}: needs 'input:NAME' arrays (and 'labels') or 'x' (and 'y')")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable .npz: {exc}") from exc
    specs = {s.name: s for s in manifest.inputs}
    for name, arr in list(inputs.items()):
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"{path}: input {name!r} is not an input of the model ({', '.join(specs)})")
        if arr.dtype != np.dtype(spec.dtype):
            inputs[name] = arr.astype(spec.dtype)
    return inputs, labels


def _skipped_runtimes(profile, chosen: str) -> dict[str, str]:
    """The profile's preferred runtimes before ``chosen`` that cannot run here, with why (e.g. no TensorRT)."""
    from edgekit.errors import BackendUnavailableError
    from runtimes.registry import get_runtime

    out: dict[str, str] = {}
    for name in profile.runtime_preference:
        if name == chosen:
            break
        try:
            ok, why = get_runtime(name).available()
        except BackendUnavailableError as exc:
            ok, why = False, str(exc)
        if not ok:
            out[name] = why
    return out


def probe(
    bundle: Path,
    *,
    profile: str | None = None,
    data: Path | None = None,
    keys: list[Path] | None = None,
    iterations: int = 200,
    warmup: int = 20,
) -> dict[str, Any]:
    """Verify, load, check and time ``bundle`` here; returns the result as a JSON-able dict."""
    from edgekit.bundle import verify_bundle
    from edgekit.detect import detect_host
    from edgekit.errors import ConfigError
    from edgekit.profiles import load_profile
    from edgekit.signing import load_public_keys
    from runtimes.bench import benchmark
    from runtimes.registry import runtime_for_profile

    host = detect_host()
    prof_name = profile or host.profile
    if not prof_name:
        raise ConfigError("no --profile given and no built-in profile matches this host")
    prof = load_profile(prof_name)
    with tempfile.TemporaryDirectory(prefix="edgekit-hil-") as tmp:
        trusted = load_public_keys(keys) if keys else None
        vb = verify_bundle(bundle, trusted, Path(tmp) / "b", require_signature=bool(keys))
        rt = runtime_for_profile(prof)
        skipped = _skipped_runtimes(prof, rt.name)
        t0 = time.perf_counter()
        session = rt.load(vb.model_path, prof)
        load_s = time.perf_counter() - t0
        with session:
            golden = vb.golden()
            result: dict[str, Any] = {
                "bundle": vb.manifest.ref,
                "signature_checked": bool(keys),
                "key_id": vb.key_id,
                "profile": prof.name,
                "runtime": rt.name,
                "runtime_preference": list(prof.runtime_preference),
                "runtimes_unavailable": skipped,
                "load_s": load_s,
                "size_mb": vb.model_path.stat().st_size / 2**20,
            }
            if golden is not None and golden.outputs:
                outs = _run_batched(session, golden.inputs)
                tol = vb.manifest.tolerance
                result["golden"] = _golden_parity(outs, golden.outputs, tol.atol, tol.rtol) | {
                    "count": golden.count,
                    "accuracy": accuracy_of(outs, golden.labels),
                }
            else:
                result["golden"] = None
            if data is not None:
                inputs, labels = _load_data(Path(data), vb.manifest)
                outs = _run_batched(session, inputs)
                result["accuracy"] = accuracy_of(outs, labels)
                result["accuracy_samples"] = int(next(iter(inputs.values())).shape[0])
                result["accuracy_source"] = f"data ({result['accuracy_samples']} samples)"
            elif golden is not None:
                result["accuracy"] = result["golden"]["accuracy"] if result["golden"] else None
                result["accuracy_source"] = f"golden ({golden.count} samples)"
                result["accuracy_samples"] = golden.count
            else:
                result["accuracy"], result["accuracy_source"] = None, "none"
            sample = golden.inputs if golden is not None else None
            if sample is None:
                from runtimes.bench import synthetic_feeds

                feeds = synthetic_feeds(session.inputs, 1)
            else:
                feeds = {k: np.ascontiguousarray(v[:1]) for k, v in sample.items()}
            bench = benchmark(session, feeds, runtime=rt.name, warmup=warmup, iterations=iterations)
    result["latency"] = {k: getattr(bench, k) for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}
    result["throughput_per_s"] = bench.throughput_per_s
    result["peak_rss_mb"] = bench.peak_rss_mb
    result["iterations"] = iterations
    result["host"] = {
        "hostname": platform.node(),
        "arch": host.arch,
        "cpu": host.cpu_model,
        "cores": host.cores,
        "detected_profile": host.profile,
        "python": platform.python_version(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe", description="edgekit HIL probe (runs on the target)")
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--profile")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--key", type=Path, action="append")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)
    try:
        if np is None:
            raise ImportError("numpy is not installed")
        from edgekit.errors import EdgekitError
    except ImportError as exc:  # edgekit is not installed for this interpreter
        out: dict[str, Any] = {"ok": False, "error": f"edgekit is not importable on the target: {exc}"}
        code = 2
    else:
        try:
            out = {"ok": True} | probe(
                args.bundle, profile=args.profile, data=args.data, keys=args.key,
                iterations=max(1, args.iterations), warmup=max(0, args.warmup),
            )
            code = 0
        except EdgekitError as exc:
            out, code = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 2
    sys.stdout.write(f"\n{MARKER}\n{json.dumps(out)}\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

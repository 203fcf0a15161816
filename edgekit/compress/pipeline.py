"""Run passes over artifacts with caching and evaluation, and turn the chosen one into a signed bundle.

:class:`Workspace` holds what a run shares (source artifact, data, profile, metric, budget, cache);
:meth:`Workspace.run_chain` applies an ordered list of pass configs, evaluating after every pass;
:func:`write_outputs` writes the bundle, ``report.json``/``.md``/``.png``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import GoldenSet, create_bundle, verify_bundle
from edgekit.compress.artifact import Artifact
from edgekit.compress.cache import ArtifactCache, cache_key
from edgekit.compress.context import Budget, PassContext
from edgekit.compress.data import load_data
from edgekit.compress.inference import predict_onnx, predict_torch
from edgekit.compress.metrics import get_metric
from edgekit.compress.onnxutil import load_onnx, precision_of
from edgekit.compress.passes.evaluate import evaluate_artifact
from edgekit.compress.passes.export import ExportConfig
from edgekit.compress.recipe import BundleInfo, DataSpec, ModelSpec
from edgekit.compress.registry import PassConfig, run_pass
from edgekit.compress.source import import_source
from edgekit.compress.torchio import load_module
from edgekit.errors import CompressError
from edgekit.manifest import Lineage, Manifest, PassRecord, TensorSpec, Tolerance, sha256_json
from edgekit.profiles import load_profile
from edgekit.signing import SigningKey

__all__ = ["Stage", "Workspace", "tool_versions", "write_bundle"]


@dataclass
class Stage:
    """One artifact the run produced, with how it was made and what it measured."""

    name: str
    artifact: Artifact
    records: list[PassRecord]
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    candidate: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.name, "candidate": self.candidate, "artifact_sha256": self.artifact.sha256,
            "kind": self.artifact.kind, "precision": self.artifact.meta.get("precision"),
            "metrics": self.metrics, "passes": [r.model_dump() for r in self.records], "notes": self.notes,
            "trials": self.trials, "cached": self.cached,
        }


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgekit", "torch", "torch-pruning", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class Workspace:
    """Everything one ``edgekit compress`` run shares."""

    def __init__(self, *, model: ModelSpec, inputs: list[TensorSpec] | None, output_names: list[str] | None,
                 data: DataSpec, metric: str, target: str, budget: Budget, cache_dir: Path, base_dir: Path,
                 seed: int = 0, threads: int | None = None, quiet: bool = False, console=None,
                 bench_iterations: int = 200):
        self.cache = ArtifactCache(cache_dir)
        self.base_dir = base_dir
        self.profile = load_profile(target)
        self.source, self.source_sha256 = import_source(model, inputs, output_names, self.cache, base_dir)
        self.data = load_data(data.source, list(self.source.inputs), val_fraction=data.val_fraction,
                              seed=data.seed, base=base_dir)
        kw = {"console": console} if console is not None else {}
        self.ctx = PassContext(
            data=self.data, profile=self.profile, metric=get_metric(metric, labeled=self.data.labeled, base=base_dir),
            budget=budget, base_dir=base_dir, seed=seed, threads=threads or self.profile.threads, quiet=quiet,
            source=self.source, bench_iterations=bench_iterations, **kw,
        )
        names = [s.name for s in self.source.outputs]
        if self.source.kind == "onnx":
            ref = predict_onnx(self.source.onnx_path, self.data.val, threads=self.ctx.threads)
        else:
            ref = predict_torch(load_module(self.source), self.data.val, self.source.inputs, names)
        self.ctx.reference_outputs = ref
        self.ctx.baseline = self.ctx.score(ref)
        self._fingerprint = sha256_json({
            "data": self.data.sha256(), "profile": self.profile.model_dump(mode="json"), "seed": seed,
            "metric": self.ctx.metric.name, "budget": budget.model_dump(mode="json"),
        })
        self._evals: dict[str, dict[str, float]] = {}

    def evaluate(self, art: Artifact) -> dict[str, float]:
        if art.sha256 not in self._evals:
            self._evals[art.sha256] = evaluate_artifact(art, self.ctx)
        return dict(self._evals[art.sha256])

    def source_stage(self) -> Stage:
        return Stage("source", self.source, [], self.evaluate(self.source))

    def apply(self, art: Artifact, cfg: PassConfig) -> tuple[Artifact, PassRecord, list[str], list[dict], bool]:
        """One pass through the cache: (artifact, record, notes, trials, was_cached)."""
        t0 = time.perf_counter()
        params = cfg.model_dump(mode="json")
        if not cfg.transforms:
            res = run_pass(art, cfg, self.ctx, art.root)
            rec = PassRecord(name=cfg.pass_name, params=_jsonable(res.params), metrics=_floats(res.metrics),
                             duration_s=time.perf_counter() - t0)
            return art, rec, res.notes, res.trials, False
        key = cache_key(art.sha256, cfg.pass_name, params, self._fingerprint)
        hit = self.cache.get(key)
        if hit is not None:
            new, record = hit
            self.ctx.log(f"[dim]{cfg.pass_name}: cache hit ({key[:12]})[/dim]")
            return (new, PassRecord.model_validate(record["record"]), record.get("notes", []),
                    record.get("trials", []), True)

        def produce(tmp: Path):
            res = run_pass(art, cfg, self.ctx, tmp)
            rec = PassRecord(name=cfg.pass_name, params=_jsonable(res.params), metrics=_floats(res.metrics),
                             duration_s=time.perf_counter() - t0)
            return res.artifact, {"record": rec.model_dump(mode="json"), "notes": res.notes,
                                  "trials": _jsonable(res.trials)}

        self.ctx.log(f"[bold]{cfg.pass_name}[/bold] …")
        new, record = self.cache.build(key, produce)
        return (new, PassRecord.model_validate(record["record"]), record.get("notes", []),
                record.get("trials", []), False)

    def run_chain(self, passes: list[PassConfig], *, candidate: str | None = None,
                  start: Artifact | None = None) -> list[Stage]:
        """Apply ``passes`` in order from the source (or ``start``); evaluate after every pass."""
        art = start or self.source
        records: list[PassRecord] = []
        stages: list[Stage] = []
        for i, cfg in enumerate(passes):
            art, rec, notes, trials, cached = self.apply(art, cfg)
            records.append(rec)
            metrics = self.evaluate(art)
            if not cfg.transforms:
                metrics.update(rec.metrics)
            stages.append(Stage(f"{i + 1}:{cfg.pass_name}", art, list(records), metrics, notes, trials, cached,
                                candidate))
        return stages

    def ensure_onnx(self, stages: list[Stage], candidate: str | None = None) -> list[Stage]:
        """Append an ``export`` when the chain ends on a PyTorch model (the bundle ships ONNX)."""
        last = stages[-1] if stages else self.source_stage()
        if last.artifact.kind == "onnx":
            return stages
        more = self.run_chain([ExportConfig()], candidate=candidate, start=last.artifact)
        for s in more:
            s.records = [*last.records, *s.records]
            s.name = f"{len(stages) + 1}:export"
        return [*stages, *more]

    def meets(self, metrics: dict[str, float]) -> list[str]:
        return self.ctx.budget.violations(self.ctx.metric.name, self.ctx.baseline, metrics)


def _floats(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _golden(ws: Workspace, art: Artifact, n: int, classification: bool) -> tuple[GoldenSet, float | None]:
    sample = ws.data.val.head(n)
    outs = predict_onnx(art.onnx_path, sample, threads=1)
    acc = None
    if sample.labels is not None and classification:
        logits = next(iter(outs.values()))
        acc = float((logits.reshape(len(sample), -1).argmax(1) == sample.labels).mean())
    return GoldenSet(inputs=dict(sample.inputs), outputs=outs, labels=sample.labels), acc


def write_bundle(ws: Workspace, stage: Stage, *, info: BundleInfo, out_dir: Path, key: SigningKey,
                 recipe: dict[str, Any], labels: list[str] | None, preprocessing: dict[str, Any]) -> tuple[Path, Manifest]:
    """Sign ``stage``'s ONNX into ``out_dir/NAME-VERSION.ekb`` and verify it before returning."""
    art = stage.artifact
    if art.kind != "onnx":
        raise CompressError("the chosen model is not ONNX; a bundle ships ONNX")
    classification = bool(labels) or ws.ctx.metric.name == "accuracy"
    golden, golden_acc = _golden(ws, art, info.golden_samples, classification)
    precision = art.meta.get("precision") or precision_of(load_onnx(art.onnx_path))
    quantized = precision in ("int8", "mixed")
    peak = max(float(np.abs(v).max(initial=0)) for v in golden.outputs.values())
    tol = Tolerance(
        atol=max(1e-3, 0.05 * peak) if quantized else 1e-3, rtol=1e-2 if quantized else 1e-3,
        min_golden_accuracy=None if golden_acc is None else max(0.0, golden_acc - 1.0 / len(golden.labels)),
    )
    calib = next((r.params.get("calibration_data_sha256") for r in stage.records if r.name == "quantize"), None)
    task = "classification" if classification else ("other" if ws.data.labeled else "embedding")
    keep = ("accuracy", "fidelity", "fidelity-relerr", "p50_ms", "p95_ms", "size_mb", "params", "macs")
    metrics = {k: float(v) for k, v in stage.metrics.items() if k in keep or k == ws.ctx.metric.name}
    metrics["source_" + ws.ctx.metric.name] = float(ws.ctx.baseline)
    manifest = {
        "schema": 1, "name": info.name, "version": info.version, "task": task,
        "inputs": [s.model_dump() for s in art.inputs],
        "outputs": [s.model_dump() for s in art.outputs],
        "labels": labels, "precision": precision if precision in ("fp32", "fp16", "int8", "mixed") else "fp32",
        "preprocessing": preprocessing, "metrics": {ws.profile.name: metrics}, "tolerance": tol.model_dump(),
        "lineage": Lineage(
            source_model_sha256=ws.source_sha256, recipe=recipe, recipe_sha256=sha256_json(recipe),
            passes=stage.records, calibration_data_sha256=calib or ws.data.train.sha256(),
            tool_versions=tool_versions(),
        ).model_dump(mode="json"),
        "files": {},
    }
    out = out_dir / f"{info.name}-{info.version}.ekb"
    final = create_bundle(out, manifest, {"model.onnx": art.onnx_path, "golden.npz": golden.to_npz_bytes()}, key)
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as tmp:
        verify_bundle(out, [key.public], Path(tmp) / "b")
    return out, final

"""Budget mode: no hand-written recipe; search students, precision and fallback by measured latency.

Candidates (each a chain of passes, cached, evaluated on the target runtime after every pass):

* the source model exported as is (fp32) and quantized to INT8 (static QDQ with fallback);
* students — ``--student module:factory`` at each of ``widths``, or derived from the source by
  pruning each of ``prune_ratios`` of its channels — distilled from the source, exported, then kept
  fp32, quantized to INT8 (static QDQ with accuracy-aware fallback) and, for MatMul-heavy models,
  to dynamic INT8; when static INT8 misses where float met the budget, percentile and entropy
  calibration are tried, then quantization-aware fine-tuning.
  Students are tried smallest first; once one meets every budget the larger ones are skipped
  (same family, more channels: slower), which keeps the search to minutes.

Every candidate's quality, p50 latency and size are measured; the fastest one inside every budget is
chosen. When none is, the run fails with the closest candidates named (and the report still written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edgekit.compress.context import Budget
from edgekit.compress.onnxutil import load_onnx
from edgekit.compress.passes.distill import DistillConfig
from edgekit.compress.passes.export import ExportConfig
from edgekit.compress.passes.qat import QATConfig
from edgekit.compress.passes.quantize import QuantizeConfig
from edgekit.compress.pipeline import Stage, Workspace
from edgekit.compress.recipe import BundleInfo, DataSpec, ModelSpec
from edgekit.compress.registry import PassConfig
from edgekit.compress.run import CompressResult, finish, resolve_key, row
from edgekit.errors import CompressError
from edgekit.manifest import TensorSpec

__all__ = ["SearchSpace", "candidate_chains", "matmul_heavy", "run_budget"]


@dataclass(frozen=True)
class SearchSpace:
    """What budget mode may try."""

    student: str | None = None
    widths: tuple[int, ...] = (8, 16, 32)
    width_arg: str = "width"
    prune_ratios: tuple[float, ...] = (0.5, 0.75, 0.9)
    epochs: int = 20
    lr: float = 3e-3
    augment: str = "shift"
    calibration: str = "minmax"
    include_source: bool = True
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


def matmul_heavy(onnx_path: Path) -> bool:
    """True when MatMul/Gemm nodes outnumber convolutions (transformer-like graphs)."""
    ops = [n.op_type for n in load_onnx(onnx_path).graph.node]
    mm = sum(o in ("MatMul", "Gemm") for o in ops)
    return mm > 0 and mm >= sum(o == "Conv" for o in ops)


def candidate_chains(space: SearchSpace, trainable: bool, labeled_images: bool) -> list[tuple[str, list[PassConfig]]]:
    """The student chains to try (name, passes up to and including export)."""
    chains: list[tuple[str, list[PassConfig]]] = []
    aug = space.augment if labeled_images else "none"
    if space.student:
        for w in sorted(space.widths):
            cfg = DistillConfig(student=space.student, student_kwargs={**space.extra_kwargs, space.width_arg: w},
                                epochs=space.epochs, lr=space.lr, augment=aug, augment_copies=2, batch_size=128)
            chains.append((f"student-w{w}", [cfg, ExportConfig()]))
    elif trainable:
        for r in sorted(space.prune_ratios, reverse=True):
            cfg = DistillConfig(derive_ratio=r, epochs=space.epochs, lr=space.lr, augment=aug, augment_copies=2,
                                batch_size=128)
            chains.append((f"pruned-{int(round(r * 100))}", [cfg, ExportConfig()]))
    return chains


def _precisions(ws: Workspace, name: str, exported: list[Stage], space: SearchSpace) -> list[Stage]:
    art = exported[-1].artifact
    out: list[Stage] = []
    prec: list[tuple[str, PassConfig]] = []
    if "int8" in ws.profile.precisions:
        prec.append(("int8", QuantizeConfig(mode="static", calibration=space.calibration, strict=False)))
        if matmul_heavy(art.onnx_path):
            prec.append(("int8-dynamic", QuantizeConfig(mode="dynamic", strict=False)))
    if "fp16" in ws.profile.precisions and ws.profile.accelerator != "none":
        prec.append(("fp16", QuantizeConfig(mode="fp16")))
    metric = ws.ctx.metric.name
    float_ok = ws.ctx.budget.quality_ok(metric, ws.ctx.baseline, exported[-1].metrics.get(metric, 0.0))
    queue = list(prec)
    while queue:
        label, cfg = queue.pop(0)
        try:
            stages = ws.run_chain([cfg], candidate=f"{name}-{label}", start=art)
        except CompressError as exc:
            ws.ctx.warn(f"{name}-{label}: {exc}")
            continue
        for s in stages:
            s.records = [*exported[-1].records, *s.records]
        out.extend(stages)
        # Static INT8 missed where the float model met the budget: other calibrations clip outliers
        # differently (percentile, entropy); they are tried before quantization-aware fine-tuning.
        missed = not ws.ctx.budget.quality_ok(metric, ws.ctx.baseline, stages[-1].metrics.get(metric, 0.0))
        if label == "int8" and missed and float_ok:
            queue[:0] = [(f"int8-{m}", QuantizeConfig(mode="static", calibration=m, strict=False))
                         for m in ("percentile", "entropy") if m != space.calibration]
    return out


def run_budget(*, model: ModelSpec, inputs: list[TensorSpec] | None, output_names: list[str] | None, data: DataSpec,
               metric: str, target: str, budget: Budget, out_dir: Path, space: SearchSpace, info: BundleInfo,
               key: Path | None = None, cache_dir: Path | None = None, base_dir: Path | None = None,
               labels: list[str] | None = None, preprocessing: dict[str, Any] | None = None, quiet: bool = False,
               console: Console | None = None, seed: int = 0, bench_iterations: int = 200) -> CompressResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signing, key_note = resolve_key(key, out_dir)
    base_dir = base_dir or Path.cwd()
    ws = Workspace(model=model, inputs=inputs, output_names=output_names, data=data, metric=metric, target=target,
                   budget=budget, cache_dir=cache_dir or out_dir / ".cache", base_dir=base_dir, seed=seed,
                   quiet=quiet, console=console, bench_iterations=bench_iterations)
    src = ws.source_stage()
    rows = [row(src, ws, "source")]
    finals: list[tuple[str, Stage, list[PassConfig]]] = []

    chains: list[tuple[str, list[PassConfig]]] = []
    if space.include_source:
        chains.append(("source", [ExportConfig()] if ws.source.kind == "torch" else []))
    images = any(len(s.shape) == 4 and s.dtype.startswith("float") for s in ws.source.inputs)
    trainable = ws.source.kind == "torch" and ws.source.format == "factory"
    chains += candidate_chains(space, trainable, images and ws.data.labeled)
    found_student = False
    with ws.ctx.progress("budget search", total=len(chains)) as advance:
        for name, passes in chains:
            if found_student:
                # Students come smallest first and latency grows with size: once one meets every
                # budget, the larger ones cannot be the fastest, so they are not trained.
                rows.append({"id": name, "metrics": {}, "violations": [],
                             "notes": ["skipped: a smaller student already meets every budget"], "skipped": True})
                advance(1)
                continue
            try:
                stages = ws.run_chain(passes, candidate=name) if passes else []
            except CompressError as exc:
                ws.ctx.warn(f"candidate {name} failed: {exc}")
                rows.append({"id": name, "metrics": {}, "violations": [f"failed: {exc}"], "notes": [str(exc)]})
                advance(1)
                continue
            if not stages:
                stages = [Stage("onnx", ws.source, [], src.metrics, candidate=name)]
            rows += [row(s, ws) for s in stages]
            if stages[-1].artifact.kind == "onnx":
                finals.append((f"{name}-fp32", stages[-1], passes))
                quantized = _precisions(ws, name, stages, space)
                for q in quantized:
                    rows.append(row(q, ws))
                    finals.append((q.candidate, q, [*passes, *_cfgs_of(q)]))
                if _qat_worth_it(ws, stages[-1], quantized, passes):
                    rows_q, finals_q = _qat_candidate(ws, name, passes, space)
                    rows += rows_q
                    finals += finals_q
                if name != "source":
                    found_student = any(not ws.meets(s.metrics) for n, s, _ in finals if not n.startswith("source-"))
            advance(1)

    ok = sorted(((n, s, p) for n, s, p in finals if not ws.meets(s.metrics)),
                key=lambda t: t[1].metrics.get("p50_ms", float("inf")))
    chosen = ok[0] if ok else None
    reason = ""
    if chosen is not None:
        reason = (f"{chosen[0]} is the fastest of {len(ok)} candidate(s) inside every budget "
                  f"(p50 {chosen[1].metrics.get('p50_ms', float('nan')):.4f} ms)")
        if len(ok) > 1:
            reason += f"; next: {ok[1][0]} at {ok[1][1].metrics.get('p50_ms', float('nan')):.4f} ms"
    chosen_id = None
    if chosen is not None:
        chosen_id = next(r["id"] for r in rows if r.get("artifact_sha256") == chosen[1].artifact.sha256
                         and r.get("candidate") == chosen[1].candidate)
    closest = None
    if chosen is None:
        def gap(t):
            m = t[1].metrics
            return (len(ws.meets(m)), ws.ctx.budget.quality_gap(ws.ctx.metric.name, ws.ctx.baseline, m.get(ws.ctx.metric.name, 0.0)),
                    m.get("p50_ms", float("inf")))
        closest = [{"id": n, "violations": ws.meets(s.metrics), "metrics": s.metrics}
                   for n, s, _ in sorted(finals, key=gap)[:3]]
    recipe = _recipe(model, inputs, output_names, data, metric, target, budget, info, chosen[2] if chosen else [])
    return finish(ws, rows=rows, chosen=chosen[1] if chosen else None, chosen_id=chosen_id, out_dir=out_dir,
                  key=signing, key_note=key_note, recipe=recipe, info=info, labels=labels,
                  preprocessing=preprocessing or {}, closest=closest,
                  extra={"mode": "budget", "reason": reason, "search_space": {k: v for k, v in space.__dict__.items()},
                         "candidates": [{"id": n, "metrics": s.metrics} for n, s, _ in finals]})


def _qat_worth_it(ws: Workspace, fp32: Stage, quantized: list[Stage], passes: list[PassConfig]) -> bool:
    """PTQ missed the quality budget where the float model met it, and the model can be trained."""
    metric = ws.ctx.metric.name
    int8 = [q for q in quantized if q.artifact.meta.get("precision") in ("int8", "mixed")]
    return (bool(int8) and ws.source.kind == "torch" and ws.source.format == "factory" and len(passes) >= 1
            and ws.ctx.budget.quality_ok(metric, ws.ctx.baseline, fp32.metrics.get(metric, 0.0))
            and not any(ws.ctx.budget.quality_ok(metric, ws.ctx.baseline, q.metrics.get(metric, 0.0)) for q in int8))


def _qat_candidate(ws: Workspace, name: str, passes: list[PassConfig], space: SearchSpace):
    """``…, qat, export, quantize`` for a candidate whose INT8 post-training quantization missed."""
    chain = [*passes[:-1], QATConfig(), passes[-1],
             QuantizeConfig(mode="static", calibration=space.calibration, strict=False)]
    try:
        stages = ws.run_chain(chain, candidate=f"{name}-qat-int8")
    except CompressError as exc:
        ws.ctx.warn(f"{name}-qat-int8: {exc}")
        return [], []
    rows = [row(s, ws) for s in stages[len(passes) - 1:]]
    return rows, [(f"{name}-qat-int8", stages[-1], chain)]


def _cfgs_of(stage: Stage) -> list[PassConfig]:
    from edgekit.compress.registry import config_type

    last = stage.records[-1]
    ctype = config_type(last.name)
    fields = set(ctype.model_fields)
    return [ctype.model_validate({k: v for k, v in last.params.items() if k in fields})]


def _recipe(model, inputs, output_names, data, metric, target, budget, info, passes) -> dict[str, Any]:
    """The recipe that reproduces the chosen candidate (also the lineage's recipe)."""
    return {
        "version": 1, "bundle": info.model_dump(), "model": model.model_dump(exclude_defaults=True),
        "inputs": [s.model_dump() for s in inputs] if inputs else None, "outputs": output_names,
        "data": data.model_dump(), "metric": metric, "target": target, "budget": budget.model_dump(),
        "passes": [{p.pass_name: p.model_dump(mode="json", exclude_defaults=True)} for p in passes],
    }

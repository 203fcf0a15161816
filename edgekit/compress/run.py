"""``edgekit compress --recipe``: run a recipe end to end and write the bundle and reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgekit.compress.pipeline import Stage, Workspace, write_bundle
from edgekit.compress.recipe import BundleInfo, Recipe, load_recipe
from edgekit.compress.report import write_reports
from edgekit.errors import BudgetError
from edgekit.manifest import sha256_json
from edgekit.signing import SigningKey, generate_keypair, load_signing_key

__all__ = ["CompressResult", "finish", "resolve_key", "row", "run_recipe", "run_recipe_file"]


@dataclass(frozen=True)
class CompressResult:
    bundle: Path | None
    report: dict[str, Any]
    out_dir: Path


def resolve_key(key: Path | None, out_dir: Path) -> tuple[SigningKey, str]:
    """The signing key: ``--key``, or ``out_dir/signing.key`` (generated when absent, and said so)."""
    if key is not None:
        return load_signing_key(key), f"{key} (given)"
    priv = out_dir / "signing.key"
    if priv.exists():
        return load_signing_key(priv), f"{priv} (existing key in the output folder)"
    priv, pub = generate_keypair(out_dir)
    return load_signing_key(priv), f"generated {priv} (public key {pub.name}); pass --key to sign with your own"


def row(stage: Stage, ws: Workspace, ident: str | None = None) -> dict[str, Any]:
    return {"id": ident or (f"{stage.candidate}/{stage.name}" if stage.candidate else stage.name),
            **stage.summary(), "violations": ws.meets(stage.metrics)}


def finish(ws: Workspace, *, rows: list[dict], chosen: Stage | None, chosen_id: str | None, out_dir: Path,
           key: SigningKey, key_note: str, recipe: dict[str, Any], info: BundleInfo, labels, preprocessing,
           closest: list[dict] | None = None, extra: dict[str, Any] | None = None) -> CompressResult:
    """Write the reports, then (when something met the budget) the signed, verified bundle."""
    host = _host_note(ws)
    if host["warning"]:
        ws.ctx.warn(host["warning"])
    report: dict[str, Any] = {
        "target": ws.profile.name, "latency_host": host, "metric": ws.ctx.metric.name, "baseline": ws.ctx.baseline,
        "budget": ws.ctx.budget.model_dump(mode="json"), "rows": rows, "chosen": chosen_id,
        "outcome": "met every budget" if chosen else "no candidate meets every budget",
        "bundle": info.model_dump(), "recipe": recipe, "recipe_sha256": sha256_json(recipe),
        "source_model_sha256": ws.source_sha256, "data_sha256": ws.data.sha256(), "key_note": key_note,
        "passes": [r.model_dump(mode="json") for r in chosen.records] if chosen else [],
        "closest": closest or [], **(extra or {}),
    }
    bundle = None
    if chosen is not None:
        bundle, manifest = write_bundle(ws, chosen, info=info, out_dir=out_dir, key=key, recipe=recipe,
                                        labels=labels, preprocessing=preprocessing)
        report["bundle_path"] = str(bundle)
        report["model_sha256"] = manifest.files["model.onnx"].sha256
    write_reports(out_dir, report)
    if chosen is None:
        lines = "; ".join(f"{c['id']}: {', '.join(c['violations'])}" for c in (closest or rows)[:3])
        raise BudgetError(f"no candidate meets every budget (closest: {lines}); see {out_dir / 'report.md'}")
    return CompressResult(bundle, report, out_dir)


def _host_note(ws: Workspace) -> dict[str, Any]:
    """Where latency was measured, and a warning when this host is not the target profile's kind."""
    import platform

    from runtimes.registry import runtime_for_profile

    machine = platform.machine()
    try:
        rt = runtime_for_profile(ws.profile).name
    except Exception:  # no runtime at all: evaluate already logged it
        rt = "none"
    warning = ""
    if machine != ws.profile.arch:
        warning = (f"latency was measured on this {machine} host with {rt}, not on a {ws.profile.name} "
                   f"({ws.profile.arch}); run on the target (hil) for its real figures")
    elif ws.profile.runtime_preference[0] != rt:
        warning = (f"latency was measured with {rt}; the {ws.profile.name} profile prefers "
                   f"{ws.profile.runtime_preference[0]}, which is not usable here")
    return {"machine": machine, "runtime": rt, "threads": ws.ctx.threads, "warning": warning}


def run_recipe(recipe: Recipe, *, base_dir: Path, out_dir: Path, key: Path | None = None,
               cache_dir: Path | None = None, quiet: bool = False, console: Console | None = None,
               bench_iterations: int = 200) -> CompressResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signing, key_note = resolve_key(key, out_dir)
    ws = Workspace(model=recipe.model, inputs=recipe.inputs, output_names=recipe.outputs, data=recipe.data,
                   metric=recipe.metric, target=recipe.target, budget=recipe.budget,
                   cache_dir=cache_dir or out_dir / ".cache", base_dir=base_dir, seed=recipe.seed, quiet=quiet,
                   console=console, bench_iterations=bench_iterations)
    rows = [row(ws.source_stage(), ws)]
    stages = ws.ensure_onnx(ws.run_chain(list(recipe.passes)))
    rows += [row(s, ws) for s in stages]
    final = stages[-1]
    ok = not ws.meets(final.metrics)
    return finish(ws, rows=rows, chosen=final if ok else None, chosen_id=rows[-1]["id"] if ok else None,
                  out_dir=out_dir, key=signing, key_note=key_note, recipe=recipe.to_json(), info=recipe.bundle,
                  labels=recipe.labels, preprocessing=recipe.preprocessing,
                  closest=None if ok else [rows[-1]])


def run_recipe_file(path: Path, out_dir: Path, **kw) -> CompressResult:
    path = Path(path)
    return run_recipe(load_recipe(path), base_dir=path.resolve().parent, out_dir=out_dir, **kw)

"""``report.json``, ``report.md`` and ``report.png`` (accuracy vs latency of every stage and candidate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_reports"]


def _fmt(v: Any, nd: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return "" if v is None else str(v)


def write_reports(out_dir: Path, report: dict[str, Any]) -> list[Path]:
    """Write the three report files; ``report`` holds ``rows`` (every stage/candidate) and ``chosen``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "report.png"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    paths[1].write_text(_markdown(report))
    _plot(report, paths[2])
    return paths


def _markdown(r: dict[str, Any]) -> str:
    metric = r["metric"]
    lines = [
        f"# edgekit compress report: {r.get('bundle', {}).get('name', 'model')}",
        "",
        f"- target profile: `{r['target']}` · metric: `{metric}` · source {metric}: {_fmt(r['baseline'])}",
        f"- budget: {json.dumps(r['budget'])}",
        f"- result: **{r['outcome']}**" + (f" — chosen `{r['chosen']}`" if r.get("chosen") else ""),
    ]
    if r.get("reason"):
        lines.append(f"- why: {r['reason']}")
    if r.get("bundle_path"):
        lines.append(f"- bundle: `{Path(r['bundle_path']).name}` (sha256 of model.onnx {r.get('model_sha256', '')[:16]}…)")
    host = r.get("latency_host") or {}
    if host:
        lines.append(f"- latency measured on: {host.get('machine')} with {host.get('runtime')}, "
                     f"{host.get('threads')} threads, batch 1")
    if host.get("warning"):
        lines.append(f"- **warning:** {host['warning']}")
    if r.get("key_note"):
        lines.append(f"- signing key: {r['key_note']}")
    lines += ["", f"| stage / candidate | {metric} | p50 ms | p95 ms | size MB | params | MACs | within budget |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        m = row["metrics"]
        if row.get("skipped"):
            lines.append(f"| {row['id']} | {'; '.join(row.get('notes', []))} |  |  |  |  |  |  |")
            continue
        mark = " ⭐" if row.get("id") == r.get("chosen") else ""
        lines.append(
            f"| {row['id']}{mark} | {_fmt(m.get(metric))} | {_fmt(m.get('p50_ms'))} | {_fmt(m.get('p95_ms'))} | "
            f"{_fmt(m.get('size_mb'))} | {_fmt(m.get('params'), 6)} | {_fmt(m.get('macs'), 6)} | "
            f"{'yes' if not row.get('violations') else '; '.join(row['violations'])} |"
        )
    for row in r["rows"]:
        for note in [] if row.get("skipped") else row.get("notes", []):
            lines.append(f"\n> {row['id']}: {note}")
    if r.get("closest"):
        lines += ["", "## Closest candidates (none met every budget)", ""]
        lines += [f"- `{c['id']}`: {'; '.join(c['violations'])}" for c in r["closest"]]
    lines += ["", "## Passes of the result", ""]
    for p in r.get("passes", []):
        lines.append(f"- **{p['name']}** `{json.dumps(p['params'], sort_keys=True)[:300]}`")
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = r["metric"]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for row in r["rows"]:
        m = row["metrics"]
        if "p50_ms" not in m or metric not in m:
            continue
        ok = not row.get("violations")
        ax.scatter(m["p50_ms"], m[metric], c="tab:green" if ok else "tab:gray", s=28, zorder=2)
        ax.annotate(row["id"], (m["p50_ms"], m[metric]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if row.get("id") == r.get("chosen"):
            ax.scatter(m["p50_ms"], m[metric], marker="*", s=260, c="tab:red", zorder=3, label="chosen")
    ax.axhline(r["baseline"], color="tab:blue", ls="--", lw=0.8, label=f"source {metric}")
    budget = r.get("budget") or {}
    if metric.startswith("fidelity"):
        floor = budget.get("min_fidelity")
    else:
        floor = r["baseline"] - budget.get("max_accuracy_drop", 0) / 100.0 if "max_accuracy_drop" in budget else None
    if floor is not None:
        ax.axhline(floor, color="tab:red", ls=":", lw=0.8, label="quality budget")
    if budget.get("latency_ms"):
        ax.axvline(budget["latency_ms"], color="tab:orange", ls=":", lw=0.8, label="latency budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, batch 1, ms ({r['target']}, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("edgekit compress: every stage and candidate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

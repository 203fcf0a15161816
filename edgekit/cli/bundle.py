"""``edgekit bundle``: create, inspect and verify signed model bundles."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgekit.bundle import read_manifest, verify_bundle
from edgekit.signing import load_public_keys, load_signing_key

bundle_app = typer.Typer(help="Create, inspect and verify model bundles (.ekb).", no_args_is_help=True)


@bundle_app.command("create")
def create(
    onnx: Path = typer.Option(..., "--onnx", help="The ONNX model to ship."),
    name: str = typer.Option(..., "--name"),
    version: str = typer.Option(..., "--version"),
    key: Path = typer.Option(..., "--key", help="Private signing key (from `edgekit keys generate`)."),
    out: Path = typer.Option(..., "--out", help="Output bundle file (.ekb)."),
    golden: Path | None = typer.Option(None, "--golden", help="NPZ with input:NAME arrays (and labels)."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated class labels."),
) -> None:
    """Bundle an existing ONNX model (golden inputs generated unless --golden is given)."""
    from runtimes.packaging import bundle_from_onnx

    manifest = bundle_from_onnx(
        onnx, name=name, version=version, key=load_signing_key(key), out=out, golden_npz=golden,
        labels=labels.split(",") if labels else None,
    )
    typer.echo(f"wrote {out} ({manifest.ref}, {len(manifest.files)} files, signed)")


@bundle_app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="Bundle file."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a bundle's manifest (not verified: use `bundle verify` for that)."""
    m = read_manifest(path)
    if as_json:
        typer.echo(json.dumps(m.model_dump(mode="json", by_alias=True), indent=2))
        return
    c = Console()
    c.print(f"[bold]{m.ref}[/bold]  task={m.task} precision={m.precision} created={m.created_at:%Y-%m-%d %H:%M}")
    t = Table("kind", "name", "dtype", "shape")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            t.add_row(kind, s.name, s.dtype, str(s.shape))
    c.print(t)
    f = Table("file", "size", "sha256")
    for fname, e in m.files.items():
        f.add_row(fname, f"{e.size:,}", e.sha256[:16] + "…")
    c.print(f)
    for profile, metrics in m.metrics.items():
        c.print(f"metrics[{profile}]: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if m.lineage.passes:
        c.print("passes: " + " → ".join(p.name for p in m.lineage.passes))


@bundle_app.command("verify")
def verify(
    path: Path = typer.Argument(..., help="Bundle file."),
    key: list[Path] = typer.Option(..., "--key", help="Trusted public key(s) or a folder of *.pub."),
) -> None:
    """Exit 0 only if every hash and the signature hold; otherwise one line says what failed."""
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as tmp:
        vb = verify_bundle(path, load_public_keys(key), Path(tmp) / "x")
    typer.echo(f"OK {vb.manifest.ref}: {len(vb.manifest.files)} files, signed by key {vb.key_id}")

"""``edgekit bench``: latency, throughput and memory of a bundle on a runtime."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgekit.bundle import verify_bundle
from edgekit.errors import ConfigError
from edgekit.profiles import load_profile
from edgekit.signing import load_public_keys
from runtimes.bench import benchmark, synthetic_feeds
from runtimes.registry import get_runtime, runtime_for_profile


def bench(
    bundle: Path = typer.Argument(..., help="Bundle file (.ekb)."),
    runtime: str | None = typer.Option(None, "--runtime", help="Runtime name (default: the profile's first)."),
    profile: str = typer.Option("x86-avx2", "--profile", help="Device profile for threads and providers."),
    batch: int = typer.Option(1, "--batch", min=1, max=4096),
    threads: int | None = typer.Option(None, "--threads", min=1, max=256),
    iterations: int = typer.Option(300, "--iterations", min=1),
    warmup: int = typer.Option(30, "--warmup", min=0),
    key: list[Path] | None = typer.Option(None, "--key", help="Trusted public key; without it only hashes are checked."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Benchmark a bundle: warm-up, then p50/p95/p99 latency, throughput and peak memory."""
    prof = load_profile(profile)
    rt = get_runtime(runtime) if runtime else runtime_for_profile(prof)
    err = Console(stderr=True)
    if not key:
        err.print("[yellow]no --key given: checking file hashes only, not the signature[/yellow]")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        vb = verify_bundle(bundle, load_public_keys(key) if key else None, Path(tmp) / "b", require_signature=bool(key))
        if rt.name == "torch":
            raise ConfigError("the torch runtime runs TorchScript/torch.export files, not bundles; use onnxruntime")
        with rt.load(vb.model_path, prof, threads=threads) as session:
            golden = vb.golden()
            if golden is not None:
                feeds = {k: _tile(v[:1], batch) for k, v in golden.inputs.items()}
            else:
                feeds = synthetic_feeds(session.inputs, batch)
            with Progress(
                TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), TimeRemainingColumn(),
                console=err, transient=True, disable=as_json,
            ) as progress:
                task = progress.add_task(f"{vb.manifest.ref} on {rt.name}", total=iterations)
                result = benchmark(
                    session, feeds, runtime=rt.name, warmup=warmup, iterations=iterations,
                    on_step=lambda: progress.advance(task),
                )
    data = result.to_dict() | {"bundle": vb.manifest.ref, "profile": prof.name, "threads": threads or prof.threads}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    t = Table(title=f"{vb.manifest.ref} · {rt.name} · batch {batch} · {data['threads']} threads")
    for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput_per_s", "peak_rss_mb"):
        t.add_row(k, f"{data[k]:.4g}")
    Console().print(t)


def _tile(sample, batch: int):
    import numpy as np

    return np.ascontiguousarray(np.repeat(sample, batch, axis=0))

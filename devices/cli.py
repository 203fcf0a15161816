"""``edgekit devices`` (host detection, profiles) and ``edgekit agent`` (the device agent)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

devices_app = typer.Typer(help="Device profiles and host detection.", no_args_is_help=True)
agent_app = typer.Typer(help="The device agent: inference server, telemetry, OTA.", no_args_is_help=True)


@devices_app.command("detect")
def detect(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Report this host's CPU features, cores, memory, GPU and best matching profile."""
    from edgekit.detect import detect_host

    info = detect_host()
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    t = Table(show_header=False)
    t.add_row("arch", info.arch)
    t.add_row("cpu", info.cpu_model)
    simd = [f for f in info.cpu_features if f.startswith(("avx", "sse4", "fma", "asimd", "neon", "amx"))]
    t.add_row("cpu features", " ".join(simd) or "-")
    t.add_row("cores", str(info.cores))
    t.add_row("memory", f"{info.memory_mb} MiB")
    t.add_row("board", info.board or "-")
    t.add_row("gpu", info.gpu or "-")
    t.add_row("profile", f"[bold]{info.profile or 'none matches'}[/bold] ({info.profile_reason})")
    Console().print(t)


@devices_app.command("profiles")
def profiles(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the built-in device profiles."""
    from edgekit.profiles import load_profiles

    ps = load_profiles()
    if as_json:
        typer.echo(json.dumps({k: v.model_dump() for k, v in ps.items()}, indent=2))
        return
    t = Table("name", "arch", "accel", "runtimes", "precisions", "threads")
    for p in ps.values():
        t.add_row(p.name, p.arch, p.accelerator, ",".join(p.runtime_preference), ",".join(p.precisions), str(p.threads))
    Console().print(t)

"""``edgekit devices`` (host detection, profiles) and ``edgekit agent`` (the device agent)."""

from __future__ import annotations

import json
from pathlib import Path

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


@agent_app.command("run")
def agent_run(
    config: Path | None = typer.Option(None, "--config", "-c", help="Agent YAML config (EDGEKIT_AGENT_* overrides)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Quick start: serve this bundle (.ekb)."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on."),
    port: int | None = typer.Option(None, "--port", help="HTTP port (0: any free port)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Where slots, spool and keys live."),
    trusted_key: list[Path] | None = typer.Option(None, "--trusted-key", help="Trusted public key (repeatable)."),
    mqtt: str | None = typer.Option(None, "--mqtt", help="Broker URL, e.g. mqtt://host:1883 (no MQTT if absent)."),
    device_id: str | None = typer.Option(None, "--device-id", help="This device's id (with --mqtt)."),
    profile: str | None = typer.Option(None, "--profile", help="Device profile name or YAML (default: detect)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Run the agent: serve the model over HTTP (Open Inference Protocol v2), report over MQTT, apply OTA."""
    import logging

    from devices.agent.agent import Agent
    from devices.agent.config import load_config
    from edgekit.errors import ConfigError

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"--log-level {log_level!r} is not one of debug, info, warning, error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if bundle is not None and not bundle.is_file():
        raise ConfigError(f"--bundle {bundle} does not exist")
    if (mqtt is None) != (device_id is None) and config is None:
        raise ConfigError("--mqtt and --device-id go together")
    overrides: dict = {
        "bundle": bundle.resolve() if bundle else None,
        "profile": profile,
        "state_dir": state_dir.resolve() if state_dir else None,
        "server": {"host": host, "port": port},
        "mqtt": {"url": mqtt, "device_id": device_id},
    }
    if trusted_key:
        overrides["ota"] = {"trusted_keys": [k.resolve() for k in trusted_key]}
    if config is None and state_dir is None:
        overrides["state_dir"] = (Path.cwd() / ".edgekit-agent").resolve()
    cfg = load_config(config, **overrides)
    Agent(cfg).run()


@agent_app.command("install-service")
def install_service(
    config: Path = typer.Option(..., "--config", "-c", help="The agent config the service will run with."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the unit here (default: stdout)."),
    executable: str | None = typer.Option(None, "--executable", help="Path of the edgekit command."),
) -> None:
    """Write a hardened systemd unit (Type=notify, WatchdogSec, Restart=on-failure) for the agent."""
    from devices.agent.config import load_config
    from devices.agent.systemd import render_unit
    from edgekit.errors import ConfigError

    cfg = load_config(config)
    unit = render_unit(cfg, config, executable=executable)
    if output is None:
        typer.echo(unit, nl=False)
        return
    try:
        output.write_text(unit)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc}") from exc
    typer.echo(f"wrote {output}; install with: sudo cp {output} /etc/systemd/system/ && "
               f"sudo systemctl daemon-reload && sudo systemctl enable --now {output.stem}")

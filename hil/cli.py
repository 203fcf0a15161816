"""``edgekit hil``: run a bundle on a target and check its budgets; simulate a fleet.

Exit codes of ``hil run``: 0 every check passed, 3 it ran but a check failed, 1 it could not run
(bad bundle, unreachable target, no runtime: one red line), 2 bad usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from edgekit.errors import ConfigError
from hil.verdict import HilReport, Slack

__all__ = ["app", "render_report"]

app = typer.Typer(help="Hardware-in-the-loop: run bundles on real targets, simulate fleets.", no_args_is_help=True)

EXIT_FAILED_CHECKS = 3


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def render_report(report: HilReport, console: Console) -> None:
    """The pass/fail table of a report."""
    m = report.measured
    title = f"{report.bundle} on {report.target} · profile {report.profile} · runtime {report.runtime}"
    t = Table(title=title)
    for col in ("check", "measured", "", "limit", "result", "note"):
        t.add_column(col)
    for c in report.checks:
        res = {True: "[green]pass[/green]", False: "[bold red]FAIL[/bold red]", None: "[dim]info[/dim]"}[c.passed]
        t.add_row(c.name, _fmt(c.measured), "" if c.op == "info" else c.op, _fmt(c.limit), res, c.note)
    console.print(t)
    lat = m.get("latency", {})
    console.print(
        f"p50 {_fmt(lat.get('p50_ms'))} ms · p95 {_fmt(lat.get('p95_ms'))} ms · p99 {_fmt(lat.get('p99_ms'))} ms · "
        f"{_fmt(m.get('throughput_per_s'))}/s · peak RSS {_fmt(m.get('peak_rss_mb'))} MB · "
        f"accuracy {_fmt(m.get('accuracy'))} ({m.get('accuracy_source', '')}) · host {m.get('host', {}).get('hostname')}",
        highlight=False,
    )
    colour = "green" if report.verdict == "pass" else "bold red"
    console.print(f"verdict: [{colour}]{report.verdict.upper()}[/{colour}]")


@app.command("run")
def run_cmd(
    target: str = typer.Option("local", "--target", help="'local' or ssh://[user@]host[:port]."),
    bundle: Path = typer.Option(..., "--bundle", help="The bundle (.ekb) to run."),
    profile: str | None = typer.Option(None, "--profile", help="Device profile (default: the one the target detects)."),
    data: Path | None = typer.Option(None, "--data", help="Evaluation .npz ('input:NAME' + 'labels', or 'x' + 'y')."),
    key: list[Path] | None = typer.Option(None, "--key", help="Trusted public key (repeatable); without it only hashes are checked."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
    report_file: Path | None = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    identity: Path | None = typer.Option(None, "--identity", "-i", help="SSH private key for an ssh:// target."),
    remote_python: str | None = typer.Option(None, "--remote-python", help="Python with edgekit on the target (ssh default: python3)."),
    host_key_checking: str = typer.Option("accept-new", "--strict-host-key-checking", help="yes | accept-new | no"),
    known_hosts: Path | None = typer.Option(None, "--known-hosts", help="known_hosts file for the ssh target."),
    iterations: int = typer.Option(200, "--iterations", min=1, max=1_000_000),
    warmup: int = typer.Option(20, "--warmup", min=0, max=100_000),
    latency_slack: float = typer.Option(0.5, "--latency-slack", min=0.0, help="Relative slack on latency/throughput/memory figures."),
    max_accuracy_drop: float = typer.Option(0.02, "--max-accuracy-drop", min=0.0, max=1.0),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="Seconds the probe may run on the target."),
) -> None:
    """Run a bundle on a target, measure it, and compare with the manifest's budgets for the profile."""
    from hil.run import run_hil
    from hil.targets import parse_target

    if host_key_checking not in ("yes", "accept-new", "no"):
        raise ConfigError(f"--strict-host-key-checking {host_key_checking!r}: use yes, accept-new or no")
    if not bundle.is_file():
        raise ConfigError(f"--bundle {bundle} is not a file")
    checking: Literal["yes", "accept-new", "no"] = host_key_checking  # type: ignore[assignment]
    tgt = parse_target(target, identity=identity, remote_python=remote_python, host_key_checking=checking,
                       known_hosts=known_hosts)
    report = run_hil(
        tgt, bundle, profile=profile, data=data, keys=key, iterations=iterations, warmup=warmup,
        slack=Slack(latency_slack=latency_slack, max_accuracy_drop=max_accuracy_drop), timeout=timeout,
    )
    text = report.model_dump_json(indent=2)
    if report_file is not None:
        report_file.parent.mkdir(parents=True, exist_ok=True)
        report_file.write_text(text + "\n")
    if as_json:
        typer.echo(text)
    else:
        render_report(report, Console())
    if report.verdict != "pass":
        raise typer.Exit(EXIT_FAILED_CHECKS)




@app.command("simulate")
def simulate_cmd(
    devices: int = typer.Option(10, "--devices", "-n", min=1, max=100_000, help="Number of simulated devices."),
    broker: str = typer.Option(..., "--broker", help="mqtt://host:port of the broker the fleet uses."),
    fleet_url: str | None = typer.Option(None, "--fleet-url", help="Fleet base URL: bundles are only accepted from under it."),
    telemetry_interval: float = typer.Option(1.0, "--telemetry-interval", min=0.001, help="Seconds between telemetry messages."),
    duration: float = typer.Option(300.0, "--duration", min=0.0, help="Seconds to run (0: until Ctrl-C)."),
    script: Path | None = typer.Option(None, "--script", help="YAML/JSON script of per-device / per-bundle behaviour."),
    key: list[Path] | None = typer.Option(None, "--key", help="Trusted public key for downloaded bundles (repeatable)."),
    prefix: str = typer.Option("sim", "--prefix", help="Device ids are PREFIX-00000 …"),
    download: str = typer.Option("fetch", "--download", help="fetch (download + verify each bundle once) | simulate"),
    header: list[str] | None = typer.Option(None, "--header", help="'Name: value' HTTP header for bundle downloads (repeatable)."),
    profile: str | None = typer.Option(None, "--profile", help="Profile the devices announce in their birth message."),
    max_spool: int = typer.Option(10_000, "--max-spool", min=1, help="Messages each device keeps while offline."),
    as_json: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
    report_file: Path | None = typer.Option(None, "--report", help="Write the full report (with every device's last seq) here."),
) -> None:
    """Run N simulated device agents (real MQTT topics and payloads, the OTA state machine, a fake runtime)."""
    from pydantic import ValidationError

    from hil.simscript import load_script
    from hil.simulator import SimConfig, run_blocking

    if download not in ("fetch", "simulate"):
        raise ConfigError(f"--download {download!r}: use fetch or simulate")
    headers: dict[str, str] = {}
    for h in header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header {h!r}: use 'Name: value'")
        headers[name.strip()] = value.strip()
    try:
        cfg = SimConfig(broker_url=broker, devices=devices, prefix=prefix, telemetry_interval_s=telemetry_interval,
                        fleet_url=fleet_url, trusted_keys=key or [], download=download, profile=profile,
                        max_spool=max_spool, download_headers=headers)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    sc = load_script(script)
    err_console = Console(stderr=True)

    def progress(r) -> None:
        if not as_json:
            err_console.print(f"[dim]{r.duration_s:6.0f}s connected {r.connected}/{r.devices} · telemetry "
                              f"{r.telemetry_sent} · acked {r.acked} · unacked {r.unacked} · OTA {r.ota_states}[/dim]")

    report = run_blocking(cfg, sc, duration or None, on_progress=progress)
    if report_file is not None:
        report_file.parent.mkdir(parents=True, exist_ok=True)
        report_file.write_text(report.model_dump_json(indent=1) + "\n")
    if as_json:
        typer.echo(report.model_dump_json(indent=2, exclude={"last_seq"}))
        return
    t = Table(title=f"simulated {report.devices} devices for {report.duration_s:.0f}s")
    t.add_column("figure")
    t.add_column("value")
    for k, v in report.summary().items():
        t.add_row(k, str(v))
    Console().print(t)

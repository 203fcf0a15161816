"""``edgekit fleet``: run the fleet manager (``up``) and drive it over its HTTP API.

``up`` runs fleet-in-a-box (SQLite, local artifact store, a broker it starts itself) unless the
settings point elsewhere. The other commands talk to a running fleet at ``--url``
(``EDGEKIT_FLEET_URL``, default ``http://127.0.0.1:8080``) with ``--token`` (``EDGEKIT_FLEET_TOKEN``).
Light at import: heavy modules load inside the command that needs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

__all__ = ["app"]

app = typer.Typer(help="The fleet manager: run it, push bundles, roll them out, list devices.",
                  no_args_is_help=True)
rollout_app = typer.Typer(help="Health-gated staged rollouts.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")

_URL = typer.Option("http://127.0.0.1:8080", "--url", envvar="EDGEKIT_FLEET_URL", help="Fleet API base URL.")
_TOKEN = typer.Option(None, "--token", envvar="EDGEKIT_FLEET_TOKEN", help="API token (Bearer).")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _client(url: str, token: str | None):
    from fleet.client import FleetClient

    return FleetClient(url, token)


@app.command("up")
def up(
    config: Path | None = typer.Option(None, "--config", help="YAML settings file (see fleet.settings)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder for the database, artifacts, broker."),
    port: int | None = typer.Option(None, "--port", help="HTTP port of the API and dashboard (default 8080)."),
    host: str | None = typer.Option(None, "--host", help="HTTP interface (default 0.0.0.0)."),
    broker_port: int | None = typer.Option(None, "--broker-port", help="Port of the embedded broker (1883)."),
    trusted_key: list[Path] | None = typer.Option(None, "--trusted-key", help="Trusted signing public key(s)."),
    public_url: str | None = typer.Option(None, "--public-url", help="Base URL devices download bundles from."),
    secure: bool = typer.Option(
        False, "--secure",
        help="Zero trust (security: mtls): mTLS broker with per-device ACL and CRL on --broker-tls-port (8883); "
             "creates the fleet CA on first use. Default: the setting (insecure plain-TCP trial broker).",
    ),
    broker_tls_port: int | None = typer.Option(None, "--broker-tls-port", min=1, max=65535,
                                               help="TLS port devices connect to in secure mode (8883)."),
) -> None:
    """Run the fleet manager: broker, ingest, rollouts, HTTP API + dashboard. Ctrl-C stops it."""
    import logging

    from fleet.service import serve
    from fleet.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(config, data_dir=data_dir, port=port, host=host, broker_port=broker_port,
                             trusted_keys=trusted_key or None, public_url=public_url,
                             security="mtls" if secure else None, broker_tls_port=broker_tls_port)
    serve(settings, announce=typer.echo)


@app.command("push")
def push(
    bundle: Path = typer.Argument(..., help="Signed bundle file (.ekb)."),
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = _JSON,
) -> None:
    """Upload a bundle; the fleet verifies it against its trusted keys before accepting it."""
    with _client(url, token) as c:
        info = c.push(bundle)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(f"registered {info['name']}@{info['version']} (sha256 {info['sha256'][:12]}…, "
                   f"{info['size']:,} bytes)")


@app.command("devices")
def devices(
    selector: str | None = typer.Option(None, "--selector", help="e.g. tag=line-3,profile=raspberry-pi-5"),
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = _JSON,
) -> None:
    """List devices (online state, profile, what they run, OTA state)."""
    with _client(url, token) as c:
        rows = c.devices(selector)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def mv(m: dict[str, Any] | None) -> str:
        return f"{m['name']}@{m['version']}" if m else "-"

    t = Table("device", "online", "profile", "group", "tags", "active", "desired", "ota", "last seen")
    for d in rows:
        t.add_row(d["id"], "yes" if d["online"] else "no", d.get("profile") or "-", d.get("group") or "-",
                  ",".join(d.get("tags") or []) or "-", mv(d.get("active")), mv(d.get("desired")),
                  d.get("ota_state") or "-", (d.get("last_seen") or "-")[:19])
    Console().print(t)
    typer.echo(f"{len(rows)} device(s)")


def _print_rollout(st: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(f"[bold]{st['id']}[/bold]  {st['bundle']}  selector={st['selector']}  state=[bold]{st['state']}[/bold]"
            f"  soak={st['soak_s']:g}s  max failure={st['max_failure_rate']:g}  "
            f"max p95 regression={st['max_p95_regression']:g}")
    if st.get("reason"):
        c.print(f"reason: {st['reason']}", highlight=False)
    t = Table("wave", "%", "state", "devices", "installed", "failed", "waiting", "rolled back", "gate")
    for w in st["waves"]:
        gate = w.get("gate") or {}
        verdict = "-" if not gate else ("pass" if gate.get("passed") else "FAIL: " + "; ".join(gate.get("reasons", [])))
        t.add_row(str(w["index"] + 1), f"{w['percent']:g}", w["state"], str(w["devices"]), str(w["installed"]),
                  str(w["failed"]), str(w["waiting"]), str(w["rolled_back"]), verdict)
    c.print(t)


@rollout_app.command("create")
def rollout_create(
    bundle: str = typer.Option(..., "--bundle", help="NAME@VERSION of a registered bundle."),
    selector: str = typer.Option("all", "--selector", help="Devices: tag=…,group=…,profile=…,id=a,b or all."),
    waves: str = typer.Option("1,10,50,100", "--waves", help="Cumulative percentages of the devices, ending at 100."),
    soak: str = typer.Option("300s", "--soak", help="Soak per wave before its gate (300s, 5m, 1h)."),
    max_failure_rate: float = typer.Option(0.02, "--max-failure-rate", help="Max install-failure and error rate."),
    max_p95_regression: float = typer.Option(0.2, "--max-p95-regression", help="Max relative p95 increase."),
    max_confidence_drop: float = typer.Option(0.15, "--max-confidence-drop", help="Max mean-confidence drop."),
    install_timeout: str = typer.Option("600s", "--install-timeout", help="An online device not installed by then fails."),
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = _JSON,
) -> None:
    """Start a staged rollout; each wave is gated on real telemetry, a failed gate rolls that wave back."""
    from fleet.rollouts.spec import RolloutSpec

    spec = RolloutSpec.build(bundle=bundle, selector=selector, waves=waves, soak_s=soak,
                             max_failure_rate=max_failure_rate, max_p95_regression=max_p95_regression,
                             max_confidence_drop=max_confidence_drop, install_timeout_s=install_timeout)
    with _client(url, token) as c:
        st = c.create_rollout(spec.model_dump())
    _print_rollout(st, as_json)


@rollout_app.command("status")
def rollout_status(
    rollout_id: str | None = typer.Argument(None, help="Rollout id; omit to list rollouts."),
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = _JSON,
) -> None:
    """Show one rollout (waves, counts, gate results), or list them."""
    with _client(url, token) as c:
        if rollout_id:
            _print_rollout(c.rollout(rollout_id), as_json)
            return
        rows = c.rollouts()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for st in rows:
        typer.echo(f"{st['id']}  {st['bundle']}  {st['state']}  wave {st['current_wave'] + 1}/{len(st['waves'])}"
                   f"  {st['selector']}")


def _command(verb: str):
    def run(
        rollout_id: str = typer.Argument(..., help="Rollout id."),
        url: str = _URL,
        token: str | None = _TOKEN,
        as_json: bool = _JSON,
    ) -> None:
        with _client(url, token) as c:
            _print_rollout(c.rollout_command(rollout_id, verb), as_json)

    run.__doc__ = {
        "pause": "Pause: no new wave starts and no gate is taken until resumed.",
        "resume": "Resume a paused rollout.",
    }[verb]
    return run


rollout_app.command("pause")(_command("pause"))
rollout_app.command("resume")(_command("resume"))


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: str = typer.Argument(..., help="Rollout id."),
    reason: str = typer.Option("aborted by operator", "--reason"),
    url: str = _URL,
    token: str | None = _TOKEN,
    as_json: bool = _JSON,
) -> None:
    """Abort for good; the wave in flight is rolled back, finished waves keep the new version."""
    with _client(url, token) as c:
        _print_rollout(c.rollout_command(rollout_id, "abort", reason), as_json)

# Zero-trust commands (ca init/list, provision, revoke, signing-keys) straight under `edgekit fleet`.
from fleet.security.cli import fleet_security_app  # noqa: E402 - mounted after this module's own commands

app.add_typer(fleet_security_app)

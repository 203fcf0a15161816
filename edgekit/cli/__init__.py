"""The ``edgekit`` command line (typer + rich).

The core contributes ``keys`` and ``bundle``; every other package contributes its commands through the
``edgekit.cli`` entry-point group (a ``typer.Typer`` becomes a group, a function a single command), so
the core never imports the agent or the fleet, and a device with only ``edgekit[agent]`` installed
still gets a working CLI. Any :class:`~edgekit.errors.EdgekitError` ends the command with one red line
and exit code 1, never a traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console

from edgekit import __version__
from edgekit.cli.bundle import bundle_app
from edgekit.cli.keys import keys_app
from edgekit.errors import EdgekitError

__all__ = ["build_app", "main"]

err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="edgekit",
        help="Compress PyTorch models for edge devices, ship them as signed bundles, run and manage a fleet.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    ) -> None:
        """edgekit command line."""

    app.add_typer(keys_app, name="keys")
    app.add_typer(bundle_app, name="bundle")
    for ep in sorted(entry_points(group="edgekit.cli"), key=lambda e: e.name):
        try:
            obj = ep.load()
        except ImportError as exc:
            # The contributing package's own module is missing, or its extra is not installed here.
            if getattr(exc, "name", None) and ep.value.split(":")[0].startswith(exc.name or "\0"):
                continue
            hidden = typer.Typer(help=f"(unavailable: {exc})")
            app.add_typer(hidden, name=ep.name, hidden=True)
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        else:
            app.command(name=ep.name)(obj)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="edgekit")
    except EdgekitError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)

"""``edgekit keys``: bundle-signing key pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit.signing import generate_keypair, load_public_key

keys_app = typer.Typer(help="Bundle-signing keys (ed25519).", no_args_is_help=True)


@keys_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Folder to write signing.key (0600) and signing.pub into."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key pair."),
) -> None:
    """Generate an ed25519 key pair."""
    priv, pub = generate_keypair(out, overwrite=force)
    typer.echo(f"wrote {priv} (private, keep it secret) and {pub} (key id {load_public_key(pub).id})")

"""``edgekit fleet ca init | provision | revoke | keys …``: the zero-trust commands of the fleet CLI.

``fleet_security_app`` carries no name of its own: mounted with ``fleet_app.add_typer(fleet_security_app)``
its commands sit directly under ``edgekit fleet``. Paths come from the fleet settings (``--config`` YAML,
``EDGEKIT_FLEET_*``, ``--data-dir``): the CA in ``{data_dir}/pki``, bundle-signing keys in
``{data_dir}/keys/{trusted,retired}``, the secure broker files in ``{data_dir}/broker``.
Every error is one red line and exit code 1 (2 for bad usage), never a traceback. Light at import
(the ``edgekit fleet`` root loads it on every call): each command imports what it needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fleet.security.keyring import BundleKeyring
    from fleet.settings import FleetSettings

__all__ = ["fleet_security_app"]

fleet_security_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
ca_app = typer.Typer(help="The fleet's certificate authority.", no_args_is_help=True)
keys_app = typer.Typer(help="Trusted bundle-signing keys: add, retire, list (key rotation).", no_args_is_help=True)
fleet_security_app.add_typer(ca_app, name="ca")
fleet_security_app.add_typer(keys_app, name="signing-keys")

_err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", help="Fleet config YAML (see `edgekit fleet` settings).")
DataDirOpt = typer.Option(None, "--data-dir", help="Fleet data folder (default from settings: fleet-data).")


@contextmanager
def _errors() -> Iterator[None]:
    from edgekit.errors import EdgekitError

    try:
        yield
    except EdgekitError as exc:
        _err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _settings(config: Path | None, data_dir: Path | None) -> FleetSettings:
    from fleet.settings import load_settings

    return load_settings(config, data_dir=data_dir)


def _pki_dir(s: FleetSettings) -> Path:
    return s.data_dir / "pki"


def _keyring(s: FleetSettings) -> BundleKeyring:
    from fleet.security.keyring import BundleKeyring

    return BundleKeyring(s.data_dir / "keys")


def _broker_dir(s: FleetSettings) -> Path:
    return s.data_dir / "broker"


@ca_app.command("init")
def ca_init(
    hostname: list[str] = typer.Option(
        [], "--hostname", help="Extra broker host name / IP for its certificate (repeatable)."
    ),
    broker_port: int | None = typer.Option(
        None, "--broker-port", min=1, max=65535, help="TLS port of the secure broker (default: settings "
        "broker_tls_port, 8883)."),
    broker_bind: str | None = typer.Option(
        None, "--broker-bind", help="Interface the secure broker listens on (default: settings broker_host)."),
    fleet_port: int | None = typer.Option(
        None, "--fleet-port", min=0, max=65535,
        help="mTLS listener for the fleet manager's own clients (device client ids are then pinned to their "
             "certificate on --broker-port; default: settings broker_fleet_port, 8884); 0: one shared listener, "
             "ids not pinned (a standalone broker only: `fleet up --secure` always uses the fleet listener).",
    ),
    fleet_bind: str = typer.Option("127.0.0.1", "--fleet-bind", help="Interface of the fleet listener."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (every issued certificate dies)."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Create the fleet CA, the broker's server certificate, the fleet identity, the secure broker config
    and the download-token secret."""
    from fleet.security.broker_config import write_secure_broker
    from fleet.security.download_token import load_or_create_secret
    from fleet.security.pki import FleetPKI

    with _errors():
        s = _settings(config, data_dir)
        public_host = urlsplit(s.public_url or "").hostname
        loopback = ("127.0.0.1", "::1", "localhost")
        names = list(hostname)
        if public_host and public_host not in names and public_host not in loopback:
            names.append(public_host)  # the host name devices were told to use
        pki = FleetPKI.init(_pki_dir(s), server_hostnames=names, overwrite=force)
        fleet_port = s.broker_fleet_port if fleet_port is None else fleet_port
        files = write_secure_broker(
            pki, _broker_dir(s), port=broker_port or s.broker_tls_port, bind=broker_bind or s.broker_host,
            fleet_port=fleet_port or None, fleet_bind=fleet_bind,
        )
        typer.echo(f"fleet CA created in {pki.root} (private key {pki.ca_key_path}, mode 0600)")
        typer.echo(f"broker certificate for 127.0.0.1, localhost{''.join(', ' + n for n in names)}")
        load_or_create_secret(_pki_dir(s) / "download-token.key")
        typer.echo(f"fleet identity {pki.fleet_cert_path}; secure broker config {files.conf}")


@ca_app.command("list")
def ca_list(
    expiring_days: int | None = typer.Option(
        None, "--expiring-days", min=0, help="Only valid certificates that expire within this many days."
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """List issued certificates: identity, kind, serial, expiry, state (valid/expired/revoked)."""
    from fleet.security.pki import FleetPKI

    with _errors():
        pki = FleetPKI.open(_pki_dir(_settings(config, data_dir)))
        now = dt.datetime.now(dt.timezone.utc)
        shown = 0
        for r in pki.records():
            state = "revoked" if r.revoked_at else ("expired" if r.not_after <= now else "valid")
            if expiring_days is not None and (
                state != "valid" or r.not_after > now + dt.timedelta(days=expiring_days)
            ):
                continue
            typer.echo(f"{r.cn}\t{r.kind}\t{r.serial}\t{r.not_after:%Y-%m-%d}\t{state}")
            shown += 1
        typer.echo(f"{shown} certificate(s)")


@fleet_security_app.command("provision")
def provision_cmd(
    device_id: str = typer.Argument(..., help="The device id (becomes the certificate CN and MQTT user)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the device's key, certificate and agent.yaml."),
    profile: str | None = typer.Option(None, "--profile", help="Device profile name (e.g. raspberry-pi-5)."),
    tags: str = typer.Option("", "--tags", help="Comma-separated device tags (e.g. site=lab,canary)."),
    renew: bool = typer.Option(False, "--renew", help="Issue an overlapping new certificate for a device."),
    broker_url: str | None = typer.Option(None, "--broker-url", help="mqtts:// URL devices use (default: "
                                          "the fleet's public host, port broker_tls_port: 8883)."),
    fleet_url: str | None = typer.Option(None, "--fleet-url", help="Fleet API URL (default: settings public_url)."),
    trusted_key: list[Path] = typer.Option(
        [], "--trusted-key", help="Bundle-signing public key or folder (default: the fleet's trusted keys)."
    ),
    install_dir: Path | None = typer.Option(
        None, "--install-dir", help="Where the folder will live on the device (paths in agent.yaml)."
    ),
    csr: Path | None = typer.Option(
        None, "--csr", help="PEM CSR made on the device: certify its key instead of generating one here."
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Issue a device's key + certificate (CN = device id) and write a ready agent config."""
    from edgekit.errors import ConfigError
    from fleet.security.pki import FleetPKI
    from fleet.security.provision import provision

    with _errors():
        s = _settings(config, data_dir)
        pki = FleetPKI.open(_pki_dir(s))
        if broker_url is None:
            host = urlsplit(s.public_url or "").hostname or "127.0.0.1"
            broker_url = f"mqtts://{host}:{s.broker_tls_port}"
        keys = list(trusted_key)
        if not keys:
            ring = _keyring(s)
            keys = [ring.trusted_dir] if ring.trusted() else list(s.trusted_keys)
        csr_pem = None
        if csr is not None:
            try:
                csr_pem = csr.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read CSR {csr}: {exc}") from exc
        result = provision(
            pki, device_id, out_dir=out, broker_url=broker_url, fleet_url=fleet_url or s.public_url,
            trusted_keys=keys, profile=profile, tags=[t for t in tags.split(",") if t.strip()],
            renew=renew, install_dir=install_dir, csr_pem=csr_pem,
        )
        verb = "renewed" if renew else "provisioned"
        typer.echo(
            f"{verb} {device_id}: certificate serial {result.identity.serial}, valid until "
            f"{result.identity.not_after:%Y-%m-%d}; wrote {result.out_dir} "
            + ("(certificate for the device's own key, agent.yaml)" if csr_pem else "(key 0600, agent.yaml)")
        )


@fleet_security_app.command("renew")
def renew_cmd(
    device_id: str = typer.Argument(..., help="The device asked to renew its certificate."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Ask a device, over its own MQTT channel, to renew its certificate now (needs the running secure fleet).

    The device makes a new key and CSR, the fleet signs it, the device swaps it in live. The request is
    retained: an offline device renews when it next connects. Devices also renew by themselves once two
    thirds of a certificate's lifetime are gone; `provision --renew` is the out-of-band path.
    """
    from edgekit.errors import ConfigError
    from fleet.security.pki import FleetPKI
    from fleet.security.renewal import request_renewal

    with _errors():
        s = _settings(config, data_dir)
        if not s.secure:
            raise ConfigError("renewal over MQTT needs the secure fleet (security: mtls / `edgekit fleet up --secure`)")
        pki = FleetPKI.open(_pki_dir(s))
        if not pki.active(device_id):
            raise ConfigError(f"device {device_id!r} holds no valid certificate to renew "
                              "(never provisioned, expired or revoked): provision it instead")
        request_renewal(s, device_id)
        typer.echo(f"asked {device_id} to renew its certificate (retained: applies when it next connects); "
                   "its events show cert.renewed or cert.renewal_failed")


@fleet_security_app.command("revoke")
def revoke_cmd(
    device_id: str = typer.Argument(..., help="The device whose certificates are revoked."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Revoke a device: CRL + ACL deny rule, and reload a running secure broker (no restart)."""
    from edgekit.errors import FleetError
    from fleet.security.broker_config import SecureBrokerFiles, apply_revocation
    from fleet.security.pki import FleetPKI

    with _errors():
        s = _settings(config, data_dir)
        pki = FleetPKI.open(_pki_dir(s))
        serials = pki.revoke(device_id)
        files = SecureBrokerFiles.in_dir(_broker_dir(s))
        try:
            reloaded = apply_revocation(pki, files)
        except FleetError as exc:
            raise FleetError(
                f"{device_id} is revoked in the CA and CRL, but the broker was NOT reloaded ({exc}); "
                "send it SIGHUP or restart it"
            ) from exc
        what = f"{len(serials)} certificate(s) revoked" if serials else "already revoked"
        where = "broker reloaded" if reloaded else "no running secure broker; takes effect when it starts"
        typer.echo(f"{device_id}: {what}; CRL {pki.crl_path} regenerated; {where}; {_mark_revoked(s, device_id)}")


def _mark_revoked(s: FleetSettings, device_id: str) -> str:
    """Show the device offline in the registry (its session may live on, cut off by the ACL, and then no
    last will ever says so) and audit the revocation. The PKI is the authority: a registry that cannot be
    reached is reported, not fatal."""
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.audit import record
    from fleet.db.base import Database
    from fleet.db.models import Device

    db = Database(s.database)
    try:
        with db.session() as session:
            dev = session.get(Device, device_id)
            if dev is not None:
                dev.online = False
                dev.last_error = "certificate revoked"
            record(session, "cli", "device.revoke", f"device:{device_id}", {"known_device": dev is not None})
        return "registry: marked offline" if dev is not None else "registry: device not seen yet"
    except SQLAlchemyError as exc:
        return f"registry NOT updated ({type(exc).__name__}; it shows the device until its session ends)"
    finally:
        db.dispose()


@fleet_security_app.command("reinstate")
def reinstate_cmd(
    device_id: str = typer.Argument(..., help="A revoked device that may be provisioned again."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Allow a revoked device id again (provision it anew); its old certificates stay revoked."""
    from fleet.security.broker_config import SecureBrokerFiles, apply_revocation
    from fleet.security.pki import FleetPKI

    with _errors():
        s = _settings(config, data_dir)
        pki = FleetPKI.open(_pki_dir(s))
        pki.reinstate(device_id)
        apply_revocation(pki, SecureBrokerFiles.in_dir(_broker_dir(s)))  # rewrites the ACL, reloads
        typer.echo(f"{device_id} may be provisioned again (without --renew); old certificates stay revoked")


@keys_app.command("add")
def keys_add(
    public_key: Path = typer.Argument(..., help="A PEM ed25519 public key (e.g. signing.pub)."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Trust another bundle-signing key (several may be trusted at once during a rotation)."""
    with _errors():
        key = _keyring(_settings(config, data_dir)).add(public_key)
        typer.echo(f"trusted key {key.id}")


@keys_app.command("retire")
def keys_retire(
    key_id: str = typer.Argument(..., help="Id of the trusted key to retire (see `signing-keys list`)."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Retire a key: bundles it signed are refused from now on (re-provision devices to propagate)."""
    with _errors():
        key = _keyring(_settings(config, data_dir)).retire(key_id)
        typer.echo(f"retired key {key.id}")


@keys_app.command("list")
def keys_list(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """List trusted and retired bundle-signing keys."""
    with _errors():
        ring = _keyring(_settings(config, data_dir))
        for k in ring.trusted():
            typer.echo(f"trusted {k.id}")
        for kid in sorted(ring.retired_ids()):
            typer.echo(f"retired {kid}")

"""mTLS for the fleet manager's own MQTT clients (ingest, desired publisher) against the secure broker.

One call after ``fleet.mqtt.new_client`` and before ``connect``::

    apply_fleet_tls(client, FleetPKI.open(settings.data_dir / "pki"))

The client then presents the fleet identity (CN ``@edgekit-fleet``: the ACL's fleet rights) and
verifies the broker's certificate against the fleet CA, host name included.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from edgekit.errors import ConfigError
from fleet.security.pki import FleetPKI

__all__ = ["apply_fleet_tls"]


def apply_fleet_tls(client: mqtt.Client, pki: FleetPKI) -> mqtt.Client:
    """Configure ``client`` for mutual TLS with the fleet identity; returns it. Bad files → ConfigError."""
    for p in (pki.ca_cert_path, pki.fleet_cert_path, pki.fleet_key_path):
        if not p.exists():
            raise ConfigError(f"{p} is missing; run `edgekit fleet ca init`")
    try:
        client.tls_set(
            ca_certs=str(pki.ca_cert_path),
            certfile=str(pki.fleet_cert_path),
            keyfile=str(pki.fleet_key_path),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up MQTT TLS with the fleet identity in {pki.root}: {exc}") from exc
    return client

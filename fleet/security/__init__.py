"""Zero-trust fleet: a device is only who its certificate says, and may only touch its own topics.

One module per job:

* :mod:`fleet.security.pki` — the fleet CA in ``{data_dir}/pki``: device certificates (CN = device
  id), the fleet manager's identity (``@edgekit-fleet``), the broker's server certificate; overlapping
  renewal (also from a device's CSR); revocation → CRL + deny-list.
* :mod:`fleet.security.broker_config` — mosquitto config for mTLS (``require_certificate``,
  ``use_identity_as_username``, ``crlfile``, anonymous off), the per-device ACL, and
  :func:`~fleet.security.broker_config.apply_revocation` / ``reload_broker`` (SIGHUP: ACL, CRL and
  server certificate are re-read without dropping anyone else).
* :mod:`fleet.security.secure_broker` — :class:`~fleet.security.secure_broker.SecureBroker`, that
  mosquitto as a child process of the fleet: start (ports checked), stop, reload, revoke.
* :mod:`fleet.security.provision` — a device folder: key 0600, certificate, CA, trusted bundle keys,
  ``agent.yaml`` in :class:`devices.agent.config.AgentConfig` field names.
* :mod:`fleet.security.keyring` — bundle-signing key rotation (``keys/trusted``, ``keys/retired``).
* :mod:`fleet.security.download_token` — short-lived HMAC tokens binding device, bundle@version, expiry.
* :mod:`fleet.security.renewal` — certificate renewal over the device's own MQTT channel: the
  :class:`~fleet.security.renewal.CertificateIssuer` answers devices' CSRs (``csr`` → ``cert`` topics);
  ``request_renewal`` asks a device to renew now (``edgekit fleet renew``).
* :mod:`fleet.security.client_tls` — mTLS for the fleet manager's own paho clients.
* :mod:`fleet.security.cli` — ``edgekit fleet ca init | provision | renew | revoke | signing-keys``.

How the rest of the fleet uses it
---------------------------------
``edgekit fleet up --secure`` (or ``security: mtls`` in the YAML / ``EDGEKIT_FLEET_SECURITY=mtls``):
:class:`fleet.service.FleetService` opens the CA in ``{data_dir}/pki`` (creating it, with a loud log
line, when ``edgekit fleet ca init`` was not run) and starts
``SecureBroker(pki, data_dir / "broker", port=broker_tls_port, fleet_port=broker_fleet_port)`` instead of
the plain trial broker; the fleet's own clients (``fleet.mqtt.new_client``: ingest, desired publisher)
call ``apply_fleet_tls`` and connect to the loopback fleet listener; devices use
``mqtts://<public host>:8883``. ``edgekit fleet revoke`` finds the running broker through its pid file
and reloads it (SIGHUP). The default ``security: insecure`` keeps the plain trial broker, whose config
and log carry ``INSECURE_BANNER``.

Bundle downloads: the rollout manager (``fleet/rollouts/manager.py``), when *publishing* a device's desired
state (each publish, re-publishes on birth and after a download the fleet refused with 403 included, so
the token is fresh), sends ``tokenized_desired(desired, secret)`` instead of ``desired``:
its bundle URL then carries ``?token=…`` for that device, bound to the bundle's name, version and
sha256 (:func:`~fleet.security.download_token.tokenized_url` does the same for a bare URL). The download
route (``fleet/api/routes/bundles.py``) verifies it and answers 403 with the reason on failure; with a
valid token the device needs no API token. The agent sends ``X-Edgekit-Device: <id>`` (written by
``provision``), and the route then also requires the token to be that device's. The secret comes from
``load_or_create_secret(data_dir / "pki" / "download-token.key")``.

Agent side: the agent resolves the TLS paths of ``agent.yaml`` relative to it, keeps one TLS context and
reloads a renewed certificate/key pair into it (``devices/agent/mqtt.py``). Renewal normally arrives
over MQTT (``devices/agent/certs.py``: key made on the device, CSR out, certificate checked and
installed crash-safely); ``provision --renew`` copied onto the device is the out-of-band path. Either
way it takes effect without an agent restart or a reconnect. The download route also refuses the
tokens of a device revoked after they were issued (:class:`~fleet.security.pki.DenyList`).
"""

__all__: list[str] = []

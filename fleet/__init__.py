"""The edgekit fleet manager: MQTT ingest, bundle registry, health-gated rollouts, HTTP API, analytics.

One module, one job:

- ``settings``   ``FleetSettings`` (defaults < ``EDGEKIT_FLEET_*`` < ``--config`` YAML < CLI options)
- ``db``         tables (``models``, fleet-web's ``web_models``), ``migrate.upgrade`` (alembic)
- ``broker``     the broker fleet-in-a-box starts (mosquitto child, amqtt fallback for trials)
- ``ingest``     MQTT subscriber → queue → batch writer (``store``), de-duplicated by (device, seq)
- ``registry``   verified bundle uploads, download URLs (``artifacts``: local folder or object store);
                 ``selectors`` pick devices by tag, group, profile or id
- ``rollouts``   the persisted wave state machine (``manager``), its ``spec`` and health ``gates``
- ``mqtt``       the retained desired-state publisher; ``context`` the ``FleetContext`` of a running fleet
- ``service``    wires and runs everything (``edgekit fleet up``; ``leases``: one replica ticks rollouts);
                 ``cli`` + ``client`` the commands
- ``api``, ``auth``, ``audit``, ``dashboard``, ``analytics``: the HTTP side and the Iceberg sync

Nothing is created at import; the agent side never imports this package.
"""

"""The fleet manager's HTTP API (``/api/v1/...``), health probe and dashboard, built by :func:`create_app`.

Every ``/api/v1`` route needs ``Authorization: Bearer <token>`` (or ``X-API-Token``): a ``read`` token
may GET, an ``admin`` token may also write; missing/invalid → 401, too weak → 403. Every write is
recorded in the hash-chained audit log. Bad input is a 4xx with ``{"detail": ..., "error": ...}``.

==========================================================  =====  ==========================================
route                                                       scope  what
==========================================================  =====  ==========================================
``GET /healthz``                                            none   database, ingest and analytics status
``GET /api/v1/whoami``                                      read   the calling token's name and scope
``GET /api/v1/overview``                                    read   online/offline, versions, profiles, groups
``GET /api/v1/devices?selector=&online=&limit=&offset=``    read   devices (``X-Total-Count`` header)
``GET|PATCH /api/v1/devices/{id}``                          r / a  one device; edit tags and group
``GET /api/v1/telemetry/{id}?since=&until=&bucket_s=``      read   latency, errors, drift series
``GET /api/v1/telemetry/{id}/events``                       read   the device's recent events
``GET|POST /api/v1/bundles``                                r / a  list; upload (multipart ``file``)
``GET /api/v1/bundles/{name}/{version}``                    read   one version with its manifest
``GET /api/v1/bundles/{name}/{version}/download``           read*  the bytes, HTTP Range supported
``GET|POST /api/v1/rollouts``                               r / a  list; create
``GET /api/v1/rollouts/{id}`` (``/devices``)                read   status with waves and gates (members)
``GET /api/v1/rollouts/{id}/telemetry?bucket_s=``           read   per wave and version: p95, errors, drift
``GET /api/v1/rollouts/{id}/events?level=``                 read   device events tagged with the rollout
``POST /api/v1/rollouts/{id}/pause|resume|abort``           admin  drive the state machine
``GET /api/v1/audit`` · ``GET /api/v1/audit/verify``        read   entries; recompute the hash chain
``GET|POST /api/v1/tokens`` · ``DELETE /api/v1/tokens/{id}``  admin  list, create (secret shown once), revoke
==========================================================  =====  ==========================================

``*`` no token when the app is built with ``public_downloads=True``. OpenAPI docs at ``/docs``.
"""

from fleet.api.app import create_app

__all__ = ["create_app"]

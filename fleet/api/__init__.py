"""The fleet manager's HTTP API (``/api/v1/...``), health probe and dashboard, built by :func:`create_app`."""

from fleet.api.app import create_app

__all__ = ["create_app"]

"""The edgekit device agent: Open Inference Protocol v2 server, MQTT telemetry, OTA with rollback, systemd.

Imports neither torch nor the fleet. Entry point: :class:`~devices.agent.agent.Agent` with an
:class:`~devices.agent.config.AgentConfig` (``edgekit agent run``). Submodules are imported lazily so
``import devices.agent`` stays light.
"""

from __future__ import annotations

__all__ = ["Agent", "AgentConfig", "load_config"]


def __getattr__(name: str):
    if name == "Agent":
        from .agent import Agent

        return Agent
    if name in ("AgentConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(name)

"""``FleetContext``: everything a running fleet manager holds, handed to the HTTP app factory.

``fleet.api.create_app(ctx)`` builds its routers on these members; the service (``fleet up``) and the
tests build one context and pass it around, so nothing is a global created at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.signing import PublicKey

if TYPE_CHECKING:  # imported for annotations only: keeps `import fleet.context` light
    from fleet.db.base import Database
    from fleet.ingest import IngestStats
    from fleet.mqtt import DesiredPublisher
    from fleet.registry import BundleRegistry
    from fleet.rollouts.manager import RolloutManager
    from fleet.settings import FleetSettings

__all__ = ["FleetContext"]


@dataclass
class FleetContext:
    """The fleet manager's parts, wired once at start-up.

    - ``settings``: the resolved :class:`~fleet.settings.FleetSettings`.
    - ``database``: the :class:`~fleet.db.base.Database` (migrated before the context is built).
    - ``registry``: bundle upload / list / inspect / file path to serve (:class:`~fleet.registry.BundleRegistry`).
    - ``rollouts``: the rollout state machine (:class:`~fleet.rollouts.manager.RolloutManager`).
    - ``publisher``: writes retained ``desired`` state to devices (:class:`~fleet.mqtt.DesiredPublisher`).
    - ``ingest_stats``: live counters of the MQTT ingest (received / stored / duplicates / invalid).
    - ``trusted_keys``: public keys a bundle must be signed by to be accepted.
    """

    settings: FleetSettings
    database: Database
    registry: BundleRegistry
    rollouts: RolloutManager
    publisher: DesiredPublisher
    ingest_stats: IngestStats
    trusted_keys: list[PublicKey] = field(default_factory=list)

"""Health-gated staged rollouts: a persisted state machine (``manager``), its spec and its gates."""

from fleet.rollouts.gates import GateResult, evaluate_gate
from fleet.rollouts.manager import RolloutManager, RolloutStatus, WaveStatus
from fleet.rollouts.spec import RolloutSpec, parse_duration, parse_waves, wave_sizes

__all__ = [
    "GateResult",
    "RolloutManager",
    "RolloutSpec",
    "RolloutStatus",
    "WaveStatus",
    "evaluate_gate",
    "parse_duration",
    "parse_waves",
    "wave_sizes",
]

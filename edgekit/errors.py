"""The edgekit exception tree.

Every error edgekit raises on purpose derives from :class:`EdgekitError`; third-party exceptions are
translated at the boundary where they occur (``raise BundleError(...) from exc``) so callers handle
one family and users read one clear line::

    EdgekitError
    ├── ConfigError                 bad CLI argument, recipe, agent or fleet config (names the field/line)
    ├── BundleError                 a bundle that cannot be created or read
    │   └── BundleVerificationError a hash, size, signature, member or schema check failed
    │       └── UntrustedKeyError   signed by a key that is not trusted
    ├── ProfileError                unknown or invalid device profile
    ├── RuntimeBackendError         a runtime backend cannot be found, load a model or run it
    │   ├── BackendUnavailableError the backend's library is not installed / no device (e.g. TensorRT)
    │   └── InputError              inputs do not match the model's tensor specs (name, dtype, shape)
    ├── CompressError               a compression pass failed (export, parity, budget, ...)
    │   ├── ExportError             a module or op cannot be exported to ONNX (names it)
    │   ├── ParityError             ONNX Runtime disagrees with PyTorch past the tolerance
    │   └── BudgetError             no candidate meets the budget (lists the closest)
    ├── WireError                   an MQTT payload that does not validate
    ├── AgentError                  device-agent failures (OTA, health check, spool)
    │   └── HealthCheckError        a new model failed its golden / warm-up check
    └── FleetError                  fleet-manager failures (registry, rollout state machine)
        └── RolloutError            an illegal rollout transition or definition
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BackendUnavailableError",
    "BudgetError",
    "BundleError",
    "BundleVerificationError",
    "CompressError",
    "ConfigError",
    "EdgekitError",
    "ExportError",
    "FleetError",
    "HealthCheckError",
    "InputError",
    "ParityError",
    "ProfileError",
    "RolloutError",
    "RuntimeBackendError",
    "UntrustedKeyError",
    "WireError",
]


class EdgekitError(Exception):
    """Base of every error edgekit raises deliberately. ``str(err)`` is one line for a human."""


class ConfigError(EdgekitError):
    """A configuration or command-line input is invalid."""


class BundleError(EdgekitError):
    """A bundle cannot be created or read."""


class BundleVerificationError(BundleError):
    """A bundle failed verification: hash, size, member list, signature or schema."""


class UntrustedKeyError(BundleVerificationError):
    """The bundle is signed by a key that is not among the trusted keys."""


class ProfileError(EdgekitError):
    """A device profile is unknown or invalid."""


class RuntimeBackendError(EdgekitError):
    """A runtime backend failed to load or run a model."""


class BackendUnavailableError(RuntimeBackendError):
    """The backend cannot run here (library missing, no GPU)."""


class InputError(RuntimeBackendError):
    """Inputs do not match the model's tensor specs."""


class CompressError(EdgekitError):
    """A compression pass failed."""


class ExportError(CompressError):
    """A module or operator cannot be exported to ONNX."""


class ParityError(CompressError):
    """ONNX Runtime output differs from PyTorch beyond tolerance."""


class BudgetError(CompressError):
    """No candidate meets the budget."""


class WireError(EdgekitError):
    """An MQTT payload failed validation."""


class AgentError(EdgekitError):
    """A device-agent operation failed."""


class HealthCheckError(AgentError):
    """A model failed its post-install health check."""


class FleetError(EdgekitError):
    """A fleet-manager operation failed."""


class RolloutError(FleetError):
    """An illegal rollout definition or state transition."""

"""The runtime contract: ``Runtime.load(path, profile) -> Session``; ``Session.run(feeds) -> outputs``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgekit.errors import InputError
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile

__all__ = ["Runtime", "Session", "SessionBase", "check_inputs"]


@runtime_checkable
class Session(Protocol):
    """A loaded model. Thread-safety: ``run`` may be called from several threads."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """A backend: knows whether it can run here and loads models into sessions."""

    name: str

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when usable here, else ``(False, reason)``."""
        ...

    def load(self, path: Path, profile: DeviceProfile | None = None, *, threads: int | None = None) -> Session: ...


class SessionBase:
    """What the backends' sessions share: the tensor specs and the context-manager plumbing."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_inputs(specs: list[TensorSpec], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate feeds against specs (names, dtype, rank, fixed dims) and return contiguous arrays.

    Raises :class:`InputError` naming the first problem, so a bad request never reaches the backend.
    """
    names = {s.name for s in specs}
    if unknown := sorted(set(feeds) - names):
        raise InputError(f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(sorted(names))}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in feeds:
            raise InputError(f"missing input {spec.name!r}")
        arr = np.asarray(feeds[spec.name])
        if arr.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {spec.name!r}: dtype {arr.dtype} does not match the model's {spec.dtype}")
        if not spec.matches(arr.shape):
            raise InputError(f"input {spec.name!r}: shape {list(arr.shape)} does not match {spec.shape}")
        out[spec.name] = np.ascontiguousarray(arr)
    return out

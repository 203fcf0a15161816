"""The hot-swappable model holder.

``ModelHost.swap`` replaces the served model atomically: a request that already holds a lease keeps
the model it started with, new requests get the new one, and the old session is closed by whoever
drops its last lease (so it is never closed under a running request).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import AgentError
from edgekit.manifest import Manifest, TensorSpec
from runtimes.base import Session

__all__ = ["LoadedModel", "ModelHost", "NoModelError"]


class NoModelError(AgentError):
    """No model is being served (nothing installed yet, or every slot failed)."""


@dataclass(eq=False)
class LoadedModel:
    """A verified bundle loaded into a runtime session."""

    manifest: Manifest
    session: Session
    slot: str | None = None
    sha256: str | None = None
    runtime: str = ""
    #: moving average of one run's duration (the server runs very fast models on its event loop)
    run_ewma_s: float | None = None
    _refs: int = field(default=0, repr=False)
    _retired: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.manifest.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.manifest.outputs)

    @property
    def batchable(self) -> bool:
        """True when every input and output has a symbolic leading (batch) dimension."""
        specs = self.manifest.inputs + self.manifest.outputs
        return all(s.shape and isinstance(s.shape[0], str) for s in specs)


class ModelHost:
    """Holds the model being served; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The current model, guaranteed open until the ``with`` block ends."""
        with self._lock:
            model = self._current
            if model is None:
                raise NoModelError("no model is loaded")
            model._refs += 1
        try:
            yield model
        finally:
            self._release(model)

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        """Run the current model; returns the model that answered with its outputs."""
        with self.lease() as model:
            return model, model.session.run(feeds)

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Serve ``new`` from now on; the previous model is closed once its last request finishes."""
        with self._lock:
            old, self._current = self._current, new
            self.swaps += 1
            close_now = False
            if old is not None and old is not new:
                old._retired = True
                close_now = old._refs == 0
        if close_now and old is not None:
            old.session.close()
        return old

    def close(self) -> None:
        self.swap(None)

    def _release(self, model: LoadedModel) -> None:
        with self._lock:
            model._refs -= 1
            close_now = model._retired and model._refs == 0
        if close_now:
            model.session.close()

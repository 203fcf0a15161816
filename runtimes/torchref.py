"""PyTorch reference backend (evaluation only; never on the device agent).

Loads a TorchScript file (``.pt``/``.ts``/``.jit``) or a ``torch.export`` archive (``.pt2``), or wraps
an ``nn.Module`` with :meth:`TorchRuntime.from_module`. Runs eagerly on the CPU under ``inference_mode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import BackendUnavailableError, RuntimeBackendError
from edgekit.manifest import TensorSpec
from edgekit.profiles import DeviceProfile
from runtimes.base import SessionBase, check_inputs

__all__ = ["TorchRuntime", "TorchSession"]


class TorchSession(SessionBase):
    def __init__(self, module, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self._m = module
        self._inputs, self._outputs = inputs, outputs


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        feeds = check_inputs(self._inputs, feeds)
        args = [torch.from_numpy(feeds[s.name]) for s in self._inputs]
        with torch.inference_mode():
            res = self._m(*args)
        if isinstance(res, torch.Tensor):
            res = (res,)
        elif isinstance(res, Mapping):
            res = tuple(res[s.name] for s in self._outputs)
        return {s.name: r.detach().cpu().numpy() for s, r in zip(self._outputs, res, strict=True)}


class TorchRuntime:
    name = "torch"

    def available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch is not installed ({exc}); it is a reference backend for evaluation only"
        return True, ""

    @staticmethod
    def from_module(module, inputs: list[TensorSpec], outputs: list[TensorSpec], *, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        module.eval()
        return TorchSession(module, inputs, outputs)

    def load(
        self,
        path: Path,
        profile: DeviceProfile | None = None,
        *,
        threads: int | None = None,
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
    ) -> TorchSession:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("torch is not installed (pip install edgekit[compress])") from exc
        if inputs is None or outputs is None:
            raise RuntimeBackendError("the torch backend needs the model's input and output specs")
        path = Path(path)
        try:
            if path.suffix == ".pt2":
                module = torch.export.load(str(path)).module()
            else:
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise RuntimeBackendError(f"torch cannot load {path}: {exc}") from exc
        return self.from_module(module, inputs, outputs, threads=threads or (profile.threads if profile else None))

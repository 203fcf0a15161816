"""The pass registry, keyed by config type (torchao style).

A pass is a function ``fn(artifact, config, ctx, out_dir) -> PassOutput`` registered for one frozen
pydantic config class::

    @register_pass(QuantizeConfig)
    def quantize(artifact, config, ctx, out_dir): ...

Recipes name a pass by its config's ``pass_name``; :func:`run_pass` dispatches on ``type(config)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from edgekit.errors import CompressError, EdgekitError

if TYPE_CHECKING:
    from edgekit.compress.artifact import Artifact
    from edgekit.compress.context import PassContext

__all__ = ["PassConfig", "PassFn", "PassOutput", "config_type", "pass_names", "register_pass", "run_pass"]


class PassConfig(BaseModel):
    """Base of every pass config: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the name a recipe uses for this pass
    pass_name: ClassVar[str] = ""
    #: "torch" or "onnx": what the pass consumes ("any" for both)
    consumes: ClassVar[str] = "any"
    #: False for passes that only measure (``evaluate``): they return their input and are not cached
    transforms: ClassVar[bool] = True


@dataclass
class PassOutput:
    """What a pass hands back: the new artifact, the parameters it really used, and notes."""

    artifact: Artifact
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: candidates measured inside the pass (e.g. quantization fallback steps), for the report
    trials: list[dict[str, Any]] = field(default_factory=list)


PassFn = Callable[["Artifact", Any, "PassContext", Path], PassOutput]

_PASSES: dict[type[PassConfig], PassFn] = {}
_BY_NAME: dict[str, type[PassConfig]] = {}


def register_pass(config_cls: type[PassConfig]) -> Callable[[PassFn], PassFn]:
    """Register ``fn`` as the pass run for configs of type ``config_cls``."""
    if not config_cls.pass_name:
        raise TypeError(f"{config_cls.__name__} needs a pass_name")

    def deco(fn: PassFn) -> PassFn:
        _PASSES[config_cls] = fn
        _BY_NAME[config_cls.pass_name] = config_cls
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the passes package registers the built-in passes (each module decorates its function).
    import edgekit.compress.passes  # noqa: F401


def config_type(name: str) -> type[PassConfig]:
    """The config class of the pass a recipe calls ``name``."""
    _load_builtin()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CompressError(f"unknown pass {name!r}; known passes: {', '.join(pass_names())}") from None


def pass_names() -> list[str]:
    _load_builtin()
    return sorted(_BY_NAME)


def run_pass(artifact: Artifact, config: PassConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    """Dispatch ``config`` to its registered pass."""
    _load_builtin()
    fn = _PASSES.get(type(config))
    if fn is None:
        raise CompressError(f"no pass is registered for {type(config).__name__}")
    if config.consumes != "any" and artifact.kind != config.consumes:
        raise CompressError(
            f"pass {config.pass_name!r} needs a {config.consumes} model but gets a {artifact.kind} one"
            + (" (ONNX input: only ONNX-level passes apply)" if artifact.kind == "onnx" else
               " (add an 'export' pass before it)")
        )
    try:
        return fn(artifact, config, ctx, out_dir)
    except EdgekitError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError, OSError) as exc:
        # torch / onnx / onnxruntime / user model code: one clear line instead of a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:400]
        raise CompressError(f"pass {config.pass_name!r} failed: {type(exc).__name__}: {first}") from exc

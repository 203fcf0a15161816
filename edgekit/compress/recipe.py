"""YAML recipes (``version: 1``): the model, its inputs, data, metric, target, budget and the passes.

Validation is strict (unknown keys are errors) and every error names the file and line, which the YAML
loader's node marks preserve::

    recipe.yaml:14: passes[1].quantize.calibration: Input should be 'minmax', 'entropy' or 'percentile'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.compress.context import Budget
from edgekit.compress.registry import PassConfig, config_type
from edgekit.errors import CompressError, ConfigError
from edgekit.manifest import TensorSpec

__all__ = ["BundleInfo", "DataSpec", "ModelSpec", "Recipe", "load_recipe", "parse_recipe"]

RECIPE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """``factory`` (+ ``checkpoint`` state dict) or ``path`` to a TorchScript / ``.pt2`` / ``.onnx`` file."""

    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelSpec:
        if (self.factory is None) == (self.path is None):
            raise ValueError("give either 'factory' (module:function, with 'checkpoint') or 'path' (.pt/.ts/.pt2/.onnx)")
        if self.path and not self.path.endswith((".onnx", ".pt2", ".pt", ".ts", ".jit")):
            raise ValueError(f"path {self.path!r}: expected a .onnx, .pt2 (torch.export) or TorchScript (.pt/.ts) file")
        return self


class DataSpec(_Strict):
    source: str
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0


class BundleInfo(_Strict):
    name: str = Field(default="model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(default="1.0.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
    golden_samples: int = Field(default=16, ge=1, le=1024)


class Recipe(_Strict):
    version: Literal[1]
    bundle: BundleInfo = Field(default_factory=BundleInfo)
    model: ModelSpec
    inputs: list[TensorSpec] | None = None
    outputs: list[str] | None = None
    labels: list[str] | None = None
    data: DataSpec
    metric: str = "accuracy"
    target: str = "x86-avx2"
    budget: Budget = Field(default_factory=Budget)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    passes: list[PassConfig] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"passes"})
        d["passes"] = [{p.pass_name: p.model_dump(mode="json")} for p in self.passes]
        return d


def _compose(text: str, where: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML keeping the line of every key and item: ``{path tuple: line}``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def walk(n, path: tuple) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = constructor.construct_object(k, deep=True)
                lines[(*path, key)] = k.start_mark.line + 1
                out[key] = walk(v, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, (*path, i)) for i, v in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return (walk(node, ()) if node is not None else None), lines


def _line(lines: dict[tuple, int], loc: tuple) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "recipe"


def _fail(where: str, lines: dict[tuple, int], loc: tuple, msg: str) -> ConfigError:
    line = _line(lines, loc)
    return ConfigError(f"{where}{f':{line}' if line else ''}: {_fmt_loc(loc)}: {msg}")


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    """Validate recipe text; every error names ``where:line`` and the offending key."""
    data, lines = _compose(text, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe is a YAML mapping with 'version: 1', 'model', 'data' and 'passes'")
    if data.get("version") != RECIPE_VERSION:
        raise _fail(where, lines, ("version",), f"unsupported recipe version {data.get('version')!r}; "
                    f"this edgekit reads version {RECIPE_VERSION}")
    raw_passes = data.get("passes")
    if not isinstance(raw_passes, list) or not raw_passes:
        raise _fail(where, lines, ("passes",), "a non-empty list of passes is required, e.g. '- export: {}'")
    passes: list[PassConfig] = []
    for i, item in enumerate(raw_passes):
        if not isinstance(item, dict) or len(item) != 1:
            raise _fail(where, lines, ("passes", i), "each pass is a mapping with one key, its name (e.g. '- quantize: {...}')")
        name, cfg = next(iter(item.items()))
        try:
            ctype = config_type(str(name))
        except CompressError as exc:
            raise _fail(where, lines, ("passes", i, name), str(exc)) from None
        try:
            passes.append(ctype.model_validate(cfg or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise _fail(where, lines, ("passes", i, name, *err["loc"]), _msg(err)) from None
    try:
        return Recipe.model_validate({**data, "passes": passes})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise _fail(where, lines, tuple(err["loc"]), _msg(err)) from None


def _msg(err: dict) -> str:
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    return str(err["msg"])


def load_recipe(path: Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
    return parse_recipe(text, str(path))

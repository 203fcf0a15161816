"""Data for calibration, fine-tuning and evaluation, as plain numpy arrays checked against input specs.

Sources:

* an ``.npz``: one array per model input (by input name, or ``x`` for a single input) plus optional
  labels ``y``; optional held-out arrays with a ``_val`` suffix (``x_val``, ``y_val``), else a seeded
  split;
* a folder of images in class sub-folders (``root/<class>/*.png``; or ``root/train/<class>`` and
  ``root/val/<class>``), resized to the input's H×W and scaled to [0, 1];
* ``module:function`` returning ``(train, val)``, each ``(x, y)``, ``{"name": array, ..., "y": labels}``
  or anything indexable yielding ``(x, y)`` pairs (a torch ``Dataset``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress.refs import is_ref, resolve_ref
from edgekit.errors import ConfigError
from edgekit.manifest import TensorSpec

__all__ = ["ArraySet", "DataSplits", "load_data"]

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ArraySet:
    """Aligned arrays: one per model input (first axis = sample) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def take(self, idx: np.ndarray | slice) -> ArraySet:
        return ArraySet({k: v[idx] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[idx])

    def head(self, n: int) -> ArraySet:
        return self.take(slice(0, min(n, len(self))))

    def batches(self, size: int) -> Iterator[ArraySet]:
        for i in range(0, len(self), size):
            yield self.take(slice(i, i + size))

    def sha256(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.inputs):
            a = np.ascontiguousarray(self.inputs[k])
            h.update(f"{k}:{a.dtype}:{a.shape}".encode())
            h.update(a.tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class DataSplits:
    train: ArraySet
    val: ArraySet
    source: str

    @property
    def labeled(self) -> bool:
        return self.val.labels is not None

    def sha256(self) -> str:
        return hashlib.sha256((self.train.sha256() + self.val.sha256()).encode()).hexdigest()


def load_data(source: str | Path, specs: list[TensorSpec], *, val_fraction: float = 0.2, seed: int = 0,
              base: Path | None = None) -> DataSplits:
    """Load ``source`` and check every array against ``specs`` (names, dtypes, shapes)."""
    text = str(source)
    path = Path(text) if Path(text).is_absolute() or base is None else base / text
    if path.suffix == ".npz" or path.is_file():
        train, val = _from_npz(path, specs)
    elif path.is_dir():
        train, val = _from_folder(path, specs)
    elif is_ref(text):
        train, val = _from_function(text, specs, base)
    else:
        raise ConfigError(f"data {text!r}: not an .npz file, an image folder or a 'module:function' reference")
    if val is None:
        _check(train, specs, f"data {text}")
        train, val = _split(train, val_fraction, seed)
    for name, s in (("training", train), ("validation", val)):
        _check(s, specs, f"data {text} ({name} set)")
    if len(val) == 0 or len(train) == 0:
        raise ConfigError(f"data {text}: needs at least one training and one validation sample")
    return DataSplits(train=train, val=val, source=text)


def _split(data: ArraySet, fraction: float, seed: int) -> tuple[ArraySet, ArraySet]:
    if not 0 < fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {fraction}")
    n = len(data)
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * fraction)))
    return data.take(np.sort(order[cut:])), data.take(np.sort(order[:cut]))


def _from_npz(path: Path, specs: list[TensorSpec]) -> tuple[ArraySet, ArraySet | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise ConfigError(f"data file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data file {path} is not a readable .npz without pickled objects: {exc}") from exc

    def pick(suffix: str) -> ArraySet | None:
        inputs = {}
        for s in specs:
            for key in (s.name + suffix, ("x" + suffix) if len(specs) == 1 else None):
                if key and key in arrays:
                    inputs[s.name] = arrays[key]
                    break
        if not inputs:
            return None
        if missing := [s.name for s in specs if s.name not in inputs]:
            raise ConfigError(f"data file {path}: no array for model input(s) {', '.join(missing)}"
                              f" (arrays present: {', '.join(sorted(arrays))})")
        labels = next((arrays[k] for k in ("y" + suffix, "labels" + suffix) if k in arrays), None)
        return ArraySet(inputs, labels)

    train = pick("")
    if train is None:
        want = ", ".join(s.name for s in specs) + (" (or x)" if len(specs) == 1 else "")
        raise ConfigError(f"data file {path}: no array named {want}; arrays present: {', '.join(sorted(arrays))}")
    return train, pick("_val")


def _from_folder(root: Path, specs: list[TensorSpec]) -> tuple[ArraySet, ArraySet | None]:
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ConfigError(f"image folder {root}: needs a model with one image input [batch, C, H, W]")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes = _read_images(root / "train", specs[0], None)
        val, _ = _read_images(root / "val", specs[0], classes)
        return train, val
    data, _ = _read_images(root, specs[0], None)
    return data, None


def _read_images(root: Path, spec: TensorSpec, classes: list[str] | None) -> tuple[ArraySet, list[str]]:
    from PIL import Image, UnidentifiedImageError

    _, c, h, w = spec.shape
    if not all(isinstance(d, int) for d in (c, h, w)) or c not in (1, 3):
        raise ConfigError(f"image folder {root}: input {spec.name} must have a fixed shape [batch, 1|3, H, W]")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"image folder {root} has no class sub-folders")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()) if (root / cls).is_dir() else []:
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if c == 1 else "RGB").resize((w, h))
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as exc:
                raise ConfigError(f"cannot read image {f}: {exc}") from exc
            xs.append(arr[None] if c == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ConfigError(f"image folder {root}: no images found in {', '.join(classes)}")
    return ArraySet({spec.name: np.stack(xs).astype(spec.dtype)}, np.asarray(ys, dtype=np.int64)), classes


def _from_function(ref: str, specs: list[TensorSpec], base: Path | None) -> tuple[ArraySet, ArraySet | None]:
    fn = resolve_ref(ref, what="data function", search_path=base)
    try:
        result = fn()
    except Exception as exc:  # user code
        raise ConfigError(f"data function {ref} failed: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(f"data function {ref} must return (train, val)")
    return _coerce(result[0], specs, ref), _coerce(result[1], specs, ref)


def _coerce(obj: Any, specs: list[TensorSpec], ref: str) -> ArraySet:
    if isinstance(obj, ArraySet):
        return obj
    if isinstance(obj, Mapping):
        inputs = {s.name: _np(obj[s.name]) for s in specs if s.name in obj}
        if len(specs) == 1 and not inputs and "x" in obj:
            inputs = {specs[0].name: _np(obj["x"])}
        labels = obj.get("y", obj.get("labels"))
        return ArraySet(inputs, None if labels is None else _np(labels))
    if isinstance(obj, tuple) and len(obj) == 2 and hasattr(obj[0], "shape"):
        x, y = obj
        return ArraySet(_inputs_from(x, specs), None if y is None else _np(y))
    if hasattr(obj, "__len__") and hasattr(obj, "__getitem__"):
        items = [obj[i] for i in range(len(obj))]
        xs = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        ys = [it[1] for it in items if isinstance(it, (tuple, list)) and len(it) > 1]
        x = np.stack([_np(v) for v in xs]) if len(specs) == 1 else {
            s.name: np.stack([_np(v[s.name]) for v in xs]) for s in specs}
        return ArraySet(_inputs_from(x, specs), np.asarray([int(_np(v)) for v in ys]) if ys else None)
    raise ConfigError(f"data function {ref}: cannot use a {type(obj).__name__} as a dataset")


def _inputs_from(x: Any, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if isinstance(x, Mapping):
        return {k: _np(v) for k, v in x.items()}
    return {specs[0].name: _np(x)}


def _np(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _check(data: ArraySet, specs: list[TensorSpec], where: str) -> None:
    names = {s.name for s in specs}
    if extra := sorted(set(data.inputs) - names):
        raise ConfigError(f"{where}: arrays {', '.join(extra)} match no model input ({', '.join(sorted(names))})")
    n = None
    for s in specs:
        if s.name not in data.inputs:
            raise ConfigError(f"{where}: no array for model input {s.name!r}")
        a = data.inputs[s.name]
        if not s.matches(a.shape):
            raise ConfigError(
                f"{where}: array for input {s.name!r} has shape {list(a.shape)}, the model expects {s.shape}"
            )
        if a.dtype != np.dtype(s.dtype):
            if np.issubdtype(a.dtype, np.number) and np.can_cast(a.dtype, s.dtype, casting="same_kind"):
                data.inputs[s.name] = a.astype(s.dtype)
            else:
                raise ConfigError(f"{where}: array for input {s.name!r} is {a.dtype}, the model expects {s.dtype}")
        if n is not None and a.shape[0] != n:
            raise ConfigError(f"{where}: inputs have different sample counts ({n} vs {a.shape[0]})")
        n = a.shape[0]
    if data.labels is not None and len(data.labels) != n:
        raise ConfigError(f"{where}: {len(data.labels)} labels for {n} samples")
    if data.labels is not None and data.labels.dtype.kind not in "iuf":
        raise ConfigError(f"{where}: labels are {data.labels.dtype}; give integer class ids (and the class names "
                          "under 'labels:' in the recipe) or float targets")

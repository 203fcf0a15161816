"""Make a signed bundle from an ONNX file a user already has (``edgekit bundle create``).

Tensor specs come from the model itself (through ONNX Runtime); golden inputs are given (``.npz``)
or synthesised, and their expected outputs are computed by ONNX Runtime so a device can check itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import GoldenSet, create_bundle, file_sha256, load_golden
from edgekit.errors import BundleError
from edgekit.manifest import Manifest, Tolerance
from edgekit.signing import SigningKey
from runtimes.bench import synthetic_feeds
from runtimes.ort import OnnxRuntime

__all__ = ["bundle_from_onnx", "golden_from_session", "tool_versions"]


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgekit", "onnx", "onnxruntime", "torch", "torch-pruning", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def golden_from_session(session, inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> GoldenSet:
    outputs = session.run(inputs)
    return GoldenSet(inputs=dict(inputs), outputs=outputs, labels=labels)


def bundle_from_onnx(
    onnx_path: Path,
    *,
    name: str,
    version: str,
    key: SigningKey,
    out: Path,
    golden_npz: Path | None = None,
    golden_count: int = 8,
    labels: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BundleError(f"ONNX model {onnx_path} does not exist")
    with OnnxRuntime().load(onnx_path, threads=1) as session:
        if golden_npz:
            given = load_golden(Path(golden_npz))
            golden = golden_from_session(session, given.inputs, given.labels)
        else:
            golden = golden_from_session(session, synthetic_feeds(session.inputs, batch=golden_count, seed=7))
        specs_in, specs_out = session.inputs, session.outputs
    task = "classification" if labels or golden.labels is not None else "other"
    manifest = {
        "schema": 1,
        "name": name,
        "version": version,
        "task": task,
        "inputs": [s.model_dump() for s in specs_in],
        "outputs": [s.model_dump() for s in specs_out],
        "labels": labels,
        "precision": "fp32",
        "tolerance": Tolerance(atol=1e-3, rtol=1e-3).model_dump(),
        "lineage": {"source_model_sha256": file_sha256(onnx_path), "tool_versions": tool_versions()},
        "files": {},
    }
    manifest.update(extra or {})
    return create_bundle(out, manifest, {"model.onnx": onnx_path, "golden.npz": golden.to_npz_bytes()}, key)

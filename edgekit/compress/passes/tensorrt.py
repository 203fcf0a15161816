"""``tensorrt``: build a strongly typed TensorRT engine from the (QDQ) ONNX where TensorRT imports.

Engines are not portable, so the bundle always carries the ONNX; this pass proves on a build host that
the ONNX parses and builds (explicit QDQ, no calibrator, TensorRT 10/11 API via
``runtimes.trt.build_engine``) and records the engine size and build time. Where TensorRT or a GPU
is missing, it records that it was skipped and why, and passes the ONNX through unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.errors import CompressError, RuntimeBackendError

__all__ = ["TensorRTConfig", "tensorrt"]


class TensorRTConfig(PassConfig):
    pass_name = "tensorrt"
    consumes = "onnx"
    transforms = False

    min_batch: int = Field(default=1, ge=1)
    opt_batch: int = Field(default=1, ge=1)
    max_batch: int = Field(default=32, ge=1)
    workspace_mb: int = Field(default=1024, ge=16)
    #: fail the run when TensorRT is unavailable (default: record the skip and go on)
    required: bool = False


@register_pass(TensorRTConfig)
def tensorrt(art: Artifact, cfg: TensorRTConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    from runtimes.trt import TensorRTRuntime, build_engine

    ok, why = TensorRTRuntime().available()
    if not ok:
        if cfg.required:
            raise CompressError(f"tensorrt pass required but TensorRT is unavailable: {why}")
        return PassOutput(art, params={**cfg.model_dump(), "skipped": True, "reason": why},
                          notes=[f"tensorrt skipped: {why}; the bundle carries the ONNX and the device builds its engine"])
    t0 = time.perf_counter()
    try:
        blob = build_engine(art.onnx_path, (cfg.min_batch, cfg.opt_batch, cfg.max_batch), cfg.workspace_mb)
    except RuntimeBackendError as exc:
        raise CompressError(f"TensorRT cannot build an engine from this model: {exc}") from exc
    import tensorrt as trt

    return PassOutput(art, params={**cfg.model_dump(), "skipped": False, "tensorrt_version": trt.__version__},
                      metrics={"engine_mb": len(blob) / 1e6, "engine_build_s": time.perf_counter() - t0})

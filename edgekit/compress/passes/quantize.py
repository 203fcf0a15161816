"""``quantize``: INT8 post-training quantization to explicit-QDQ ONNX, dynamic INT8, or FP16.

Static INT8 follows onnxruntime's route (``quant_pre_process`` → ``quantize_static`` with a
``CalibrationDataReader`` over real samples, QDQ format) with MinMax / Entropy / Percentile calibration
and per-channel weights. Activation and weight types come from the target profile's ``quantization``
hints unless given (S8S8 where U8S8 would saturate, on AVX2 without VNNI).

Accuracy-aware fallback: when the quantized model misses the quality budget, per-node sensitivity is
measured with ``qdq_loss_debug`` (signal-to-quantization-noise ratio of every node's activation and
weight inputs), and the most sensitive nodes are kept in float (``nodes_to_exclude``), doubling the
set, until the budget holds or ``max_fallback_nodes`` is reached (then the run fails, naming the gap).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgekit.compress.artifact import Artifact
from edgekit.compress.context import PassContext
from edgekit.compress.data import ArraySet
from edgekit.compress.inference import predict_onnx
from edgekit.compress.onnxutil import load_onnx, precision_of, save_onnx
from edgekit.compress.registry import PassConfig, PassOutput, register_pass
from edgekit.errors import BudgetError, CompressError

__all__ = ["QuantizeConfig", "SampleReader", "node_sensitivity", "quantize", "quantize_static_qdq"]

_QUANT_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "MaxPool",
              "GlobalAveragePool", "AveragePool", "Concat", "Sigmoid", "HardSigmoid", "Softmax", "Transpose",
              "Reshape", "Flatten", "Resize", "LeakyRelu", "Gather", "Split", "Squeeze", "Unsqueeze"}
_WEIGHTED = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


class QuantizeConfig(PassConfig):
    pass_name = "quantize"
    consumes = "onnx"

    mode: Literal["static", "dynamic", "fp16"] = "static"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    #: None: take it from the target profile's quantization hints
    per_channel: bool | None = None
    activation_type: Literal["int8", "uint8"] | None = None
    weight_type: Literal["int8", "uint8"] | None = None
    reduce_range: bool | None = None
    preprocess: bool = True
    #: keep the most sensitive nodes in float until the quality budget holds
    fallback: bool = True
    max_fallback_nodes: int = Field(default=16, ge=0)
    #: quality budget for this pass alone (points vs. its input); None: the run's budget vs. the source
    max_accuracy_drop: float | None = Field(default=None, ge=0)
    nodes_to_exclude: list[str] = Field(default_factory=list)
    #: operator types to quantize. None: onnxruntime's defaults, except for attention graphs (Softmax
    #: present), where only MatMul/Gemm are quantized: masks add huge negative values that per-tensor
    #: INT8 on Add/Softmax wipes out (seen: cosine 0.88 vs 0.9998 on a small encoder). Dynamic mode:
    #: MatMul and Gemm.
    op_types: list[str] | None = None
    #: fail when the budget is still missed after fallback (False: keep the best and note it)
    strict: bool = True


@contextlib.contextmanager
def captured_logs(into: list[str]) -> Iterator[None]:
    """Collect what onnxruntime's quantization tools log on the root logger (into the pass's notes)
    instead of letting it interleave with the progress bars."""

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage().strip()
            if msg and msg not in into:
                into.append(msg[:300])

    root = logging.getLogger()
    handler = _Collect(level=logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


class SampleReader:
    """A ``CalibrationDataReader`` over an :class:`ArraySet`, in small batches, with a progress callback."""

    def __init__(self, data: ArraySet, input_names: list[str], batch: int = 16, on_batch=None):
        self._data, self._names, self._batch, self._on = data, input_names, batch, on_batch
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(self._data.batches(self._batch))

    def get_next(self):
        b = next(self._it, None)
        if b is None:
            return None
        if self._on:
            self._on(len(b))
        return {n: b.inputs[n] for n in self._names}

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self):
        # qdq_loss_debug.collect_activations iterates the reader instead of calling get_next
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def _types(cfg: QuantizeConfig, ctx: PassContext):
    from onnxruntime.quantization import QuantType

    hints = ctx.profile.quantization
    q = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    act = cfg.activation_type or hints.activation_type
    wt = cfg.weight_type or hints.weight_type
    per_channel = hints.per_channel if cfg.per_channel is None else cfg.per_channel
    reduce_range = hints.reduce_range if cfg.reduce_range is None else cfg.reduce_range
    return q[act], q[wt], per_channel, reduce_range, {"activation_type": act, "weight_type": wt,
                                                      "per_channel": per_channel, "reduce_range": reduce_range}


def quantize_static_qdq(src: Path, dst: Path, calib: ArraySet, input_names: list[str], *, act_type, weight_type,
                        per_channel: bool, reduce_range: bool, method: str, exclude: list[str],
                        on_batch=None, op_types: list[str] | None = None) -> None:
    """One ``quantize_static`` run to explicit QDQ (translating onnxruntime's errors)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": act_type.name == "QInt8", "WeightSymmetric": True}
    try:
        quantize_static(
            str(src), str(dst), SampleReader(calib, input_names, on_batch=on_batch), quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=reduce_range, activation_type=act_type, weight_type=weight_type,
            calibrate_method=methods[method], nodes_to_exclude=list(exclude) or None, extra_options=extra,
            op_types_to_quantize=op_types,
        )
    except Exception as exc:  # onnxruntime raises plain Exceptions / ValueErrors here
        raise CompressError(f"onnxruntime quantize_static failed on {src.name}: {exc}") from exc


def node_sensitivity(float_path: Path, qdq_path: Path, data: ArraySet, input_names: list[str], work: Path) -> list[tuple[str, float]]:
    """Quantizable nodes of ``float_path`` ordered most sensitive first, with the worst SQNR (dB) of their inputs."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    aug_f, aug_q = work / "aug_float.onnx", work / "aug_qdq.onnx"
    dbg.modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
    dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
    act_f = dbg.collect_activations(str(aug_f), SampleReader(data, input_names))
    act_q = dbg.collect_activations(str(aug_q), SampleReader(data, input_names))
    act_err = dbg.compute_activation_error(dbg.create_activation_matching(act_q, act_f))
    try:
        w_err = dbg.compute_weight_error(dbg.create_weight_matching(str(float_path), str(qdq_path)))
    except Exception:  # weight matching is best effort (no per-tensor weights, e.g. dynamic shapes)
        w_err = {}
    for p in (aug_f, aug_q):
        p.unlink(missing_ok=True)
    model = load_onnx(float_path)
    scores = []
    for n in model.graph.node:
        if n.op_type not in _QUANT_OPS or not n.name:
            continue
        vals = [act_err[t]["qdq_err"] for t in list(n.input) + list(n.output) if t in act_err and "qdq_err" in act_err[t]]
        vals += [w_err[t] for t in n.input if t in w_err]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            # A weighted op gets a small priority: its float fallback removes the most quantization noise.
            scores.append((n.name, float(min(vals)) - (1.0 if n.op_type in _WEIGHTED else 0.0)))
    scores.sort(key=lambda t: t[1])
    return scores


@register_pass(QuantizeConfig)
def quantize(art: Artifact, cfg: QuantizeConfig, ctx: PassContext, out_dir: Path) -> PassOutput:
    t0 = time.perf_counter()
    out = out_dir / "model.onnx"
    names = [s.name for s in art.inputs]
    if cfg.mode == "fp16":
        return _fp16(art, cfg, ctx, out_dir, t0)
    if cfg.mode == "dynamic":
        return _dynamic(art, cfg, ctx, out_dir, t0)

    act, wt, per_channel, reduce_range, chosen = _types(cfg, ctx)
    src = art.onnx_path
    notes: list[str] = []
    logged: list[str] = []
    work = out_dir / "work"
    work.mkdir()
    if cfg.preprocess:
        pre = work / "pre.onnx"
        try:
            from onnxruntime.quantization import quant_pre_process

            with captured_logs(logged):
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            src = pre
        except Exception as exc:  # pre-processing is an optimisation; quantize the graph as is
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            try:
                quant_pre_process(str(art.onnx_path), str(pre), skip_symbolic_shape=True)
                src = pre
                notes.append(f"quant_pre_process without symbolic shape inference (it failed: {first})")
            except Exception:
                src = art.onnx_path
                notes.append(f"quant_pre_process skipped, graph quantized as exported ({first})")
    calib = ctx.data.train.head(cfg.calibration_samples)
    val = ctx.val

    baseline_in = ctx.score(predict_onnx(art.onnx_path, val, threads=ctx.threads))
    metric = ctx.metric.name

    def within(score: float) -> bool:
        if cfg.max_accuracy_drop is not None and not metric.startswith("fidelity"):
            return (baseline_in - score) * 100 <= cfg.max_accuracy_drop + 1e-9
        ref = ctx.baseline if ctx.baseline is not None else baseline_in
        return ctx.budget.quality_ok(metric, ref, score)

    def attempt(exclude: list[str], label: str) -> float:
        with ctx.progress(f"calibrating ({label})", total=len(calib)) as advance, captured_logs(logged):
            quantize_static_qdq(src, out, calib, names, act_type=act, weight_type=wt, per_channel=per_channel,
                                reduce_range=reduce_range, method=cfg.calibration, exclude=exclude,
                                on_batch=advance, op_types=op_types)
        return ctx.score(predict_onnx(out, val, threads=ctx.threads))

    op_types = cfg.op_types
    if op_types is None and any(n.op_type == "Softmax" for n in load_onnx(src).graph.node):
        op_types = ["MatMul", "Gemm", "Conv"]
        notes.append("attention graph: only MatMul/Gemm/Conv quantized (masks do not survive INT8 Add/Softmax)")
    exclude = list(cfg.nodes_to_exclude)
    score = attempt(exclude, "all nodes")
    trials = [{"excluded": 0, metric: score}]
    if not within(baseline_in):
        notes.append(f"the float input already misses the quality budget ({metric} {baseline_in:.4f}); "
                     "keeping nodes in float cannot fix that, so no fallback was tried")
    elif not within(score) and cfg.fallback and cfg.max_fallback_nodes > 0:
        with captured_logs(logged):
            ranked = node_sensitivity(src, out, calib.head(64), names, work)
        order = [n for n, _ in ranked if n not in exclude]
        limit = min(cfg.max_fallback_nodes, len(order))
        sizes = sorted({min(2**i, limit) for i in range(limit.bit_length() + 1)} - {0})
        best = (score, list(exclude))
        last: list[str] = list(exclude)
        for k in sizes:
            last = exclude + order[:k]
            score = attempt(last, f"{k} node(s) in float")
            trials.append({"excluded": k, metric: score, "nodes": order[:k]})
            if score > best[0] or within(score):
                best = (score, last)
            if within(score):
                break
        if best[1] != last:  # the file on disk holds the last trial: rebuild the best one
            score = attempt(best[1], "best fallback")
        exclude = best[1]
    if not within(score) and within(baseline_in):
        msg = (f"INT8 quantization misses the quality budget: {metric} {score:.4f} "
               f"(input {baseline_in:.4f}, source {ctx.baseline if ctx.baseline is not None else float('nan'):.4f}) "
               f"even with {len(exclude)} node(s) kept in float")
        if cfg.strict:
            raise BudgetError(msg)
        notes.append(msg)
    notes += [f"onnxruntime: {m}" for m in logged if "pre-process" not in m]
    shutil.rmtree(work, ignore_errors=True)
    proto = load_onnx(out)
    save_onnx(proto, out)
    new = Artifact.create("onnx", out_dir, ["model.onnx"], list(art.inputs), list(art.outputs),
                          {"format": "onnx", "precision": "int8" if not exclude else "mixed",
                           "factory": art.meta.get("factory")})
    params = {**cfg.model_dump(), **chosen, "nodes_to_exclude": exclude, "calibration_samples_used": len(calib),
              "op_types_used": op_types,
              "calibration_data_sha256": calib.sha256()}
    return PassOutput(new, params=params, metrics={metric: score, "quantize_s": time.perf_counter() - t0,
                                                    "nodes_in_float": float(len(exclude))},
                      notes=notes, trials=trials)


def _dynamic(art: Artifact, cfg: QuantizeConfig, ctx: PassContext, out_dir: Path, t0: float) -> PassOutput:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = out_dir / "model.onnx"
    wt = QuantType.QInt8 if (cfg.weight_type or "int8") == "int8" else QuantType.QUInt8
    per_channel = bool(cfg.per_channel)
    logged: list[str] = []
    try:
        with captured_logs(logged):
            quantize_dynamic(str(art.onnx_path), str(out), op_types_to_quantize=cfg.op_types or ["MatMul", "Gemm"],
                             per_channel=per_channel, reduce_range=bool(cfg.reduce_range), weight_type=wt,
                             nodes_to_exclude=list(cfg.nodes_to_exclude) or None)
    except Exception as exc:
        raise CompressError(f"onnxruntime quantize_dynamic failed: {exc}") from exc
    score = ctx.score(predict_onnx(out, ctx.val, threads=ctx.threads))
    new = Artifact.create("onnx", out_dir, ["model.onnx"], list(art.inputs), list(art.outputs),
                          {"format": "onnx", "precision": precision_of(load_onnx(out)), "factory": art.meta.get("factory")})
    return PassOutput(new, params={**cfg.model_dump(), "op_types": cfg.op_types or ["MatMul", "Gemm"]},
                      metrics={ctx.metric.name: score, "quantize_s": time.perf_counter() - t0},
                      notes=[f"onnxruntime: {m}" for m in logged])


def _fp16(art: Artifact, cfg: QuantizeConfig, ctx: PassContext, out_dir: Path, t0: float) -> PassOutput:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = out_dir / "model.onnx"
    try:
        proto = convert_float_to_float16(load_onnx(art.onnx_path), keep_io_types=True,
                                         node_block_list=list(cfg.nodes_to_exclude) or None)
    except Exception as exc:
        raise CompressError(f"FP16 conversion failed: {exc}") from exc
    save_onnx(proto, out)
    score = ctx.score(predict_onnx(out, ctx.val, threads=ctx.threads))
    if not math.isfinite(score):
        raise CompressError("FP16 model produces non-finite outputs")
    new = Artifact.create("onnx", out_dir, ["model.onnx"], list(art.inputs), list(art.outputs),
                          {"format": "onnx", "precision": "fp16", "factory": art.meta.get("factory")})
    return PassOutput(new, params=cfg.model_dump(), metrics={ctx.metric.name: score, "quantize_s": time.perf_counter() - t0})

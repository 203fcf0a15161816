"""The inference server: Open Inference Protocol v2 over HTTP (FastAPI), plus ``/metrics``.

``create_app`` builds the app around an :class:`InferenceService` (the model host, the optional
dynamic batcher, metrics and drift). Every bad request is answered ``{"error": "..."}`` with a 4xx
naming the problem; the app never lets an exception escape as a crash of the process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgekit import __version__
from edgekit.errors import InputError, RuntimeBackendError
from runtimes.base import check_inputs

from .batching import DynamicBatcher
from .drift import DriftMonitor
from .host import LoadedModel, ModelHost, NoModelError
from .metrics import CONTENT_TYPE_LATEST, AgentMetrics
from .tensors import RequestError, decode_inputs, encode_outputs, parse_request, spec_json

__all__ = ["InferenceService", "create_app"]


#: v2 ``platform`` names of the runtimes (as KServe/Triton spell them)
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "torch": "pytorch_torchscript"}


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


@dataclass
class InferenceService:
    """What the HTTP layer needs: the host, an optional batcher, metrics, drift, a readiness hook."""

    host: ModelHost
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    drift: DriftMonitor = field(default_factory=DriftMonitor)
    batcher: DynamicBatcher | None = None
    max_body_bytes: int = 8 << 20
    #: extra readiness condition (e.g. "the batcher thread is alive"); ``None`` → always
    ready_check: Callable[[], bool] | None = None
    #: updated by the event loop; the systemd watchdog reads it to see the server is responsive
    loop_heartbeat: float = 0.0

    def ready(self) -> bool:
        if self.host.current is None:
            return False
        if self.batcher is not None and not self.batcher.alive:
            return False
        return self.ready_check() if self.ready_check else True

    #: runs expected to take less than this are done on the event loop: a thread hop would cost more
    inline_below_s: float = 0.0005
    #: told about server-side inference failures (the agent turns them into rate-limited events)
    on_error: Callable[[str], None] | None = None

    def report_error(self, message: str) -> None:
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:  # noqa: BLE001 - reporting must never fail the request path
                self.metrics.errors.labels("report").inc()

    def run_direct(self, feeds: dict[str, np.ndarray]) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        with self.host.lease() as model:
            feeds = check_inputs(model.inputs, feeds)
            t0 = time.perf_counter()
            out = model.session.run(feeds)
            dt = time.perf_counter() - t0
            prev = model.run_ewma_s
            model.run_ewma_s = dt if prev is None else 0.9 * prev + 0.1 * dt
        self.metrics.batch_size.observe(next(iter(feeds.values())).shape[0] if feeds else 1)
        return model, out

    async def infer(self, feeds: dict[str, np.ndarray]) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        model = self.host.current
        if self.batcher is not None and model is not None and model.batchable:
            fut = self.batcher.submit(feeds)
            self.metrics.queue_depth.set(self.batcher.depth)
            return await asyncio.wrap_future(fut)
        expected = model.run_ewma_s if model is not None else None
        if expected is not None and expected < self.inline_below_s:
            return self.run_direct(feeds)
        return await run_in_threadpool(self.run_direct, feeds)


def create_app(svc: InferenceService) -> FastAPI:
    """The v2 app. Routes: health, server and model metadata, infer (with/without version), metrics."""
    app = FastAPI(title="edgekit agent", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:  # pragma: no cover - last resort
        svc.metrics.errors.labels("unexpected").inc()
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/v2/health/live")
    async def live() -> Response:
        svc.loop_heartbeat = time.monotonic()
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = svc.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse({"name": "edgekit-agent", "version": __version__, "extensions": []})

    def _model(name: str, version: str | None = None) -> LoadedModel:
        model = svc.host.current
        if model is None:
            raise RequestError("no model is loaded yet", status=503)
        if name != model.name:
            raise RequestError(f"unknown model {name!r}; this agent serves {model.name!r}", status=404)
        if version is not None and version != model.version:
            raise RequestError(
                f"model {name!r} has no version {version!r}; serving version {model.version!r}", status=404
            )
        return model

    def _metadata(name: str, version: str | None) -> Response:
        try:
            m = _model(name, version)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({
            "name": m.name,
            "versions": [m.version],
            "platform": _PLATFORMS.get(m.runtime, m.runtime or "unknown"),
            "inputs": [spec_json(s) for s in m.inputs],
            "outputs": [spec_json(s) for s in m.outputs],
        })

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        return _metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> Response:
        return _metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        try:
            _model(name)
        except RequestError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"name": name, "ready": svc.ready()}, status_code=200 if svc.ready() else 503)

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        t0 = time.perf_counter()
        label = name if svc.host.current and svc.host.current.name == name else "unknown"
        try:
            body = await _read_body(request, svc.max_body_bytes)
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(f"malformed JSON: {exc}") from None
            except RecursionError:
                raise RequestError("malformed JSON: nested too deeply") from None
            req = parse_request(payload)
            model = _model(name, version)
            feeds = decode_inputs(req, model.manifest)
            try:
                answered, outputs = await svc.infer(feeds)
            except InputError as exc:
                raise RequestError(str(exc)) from None
            except NoModelError as exc:
                raise RequestError(str(exc), status=503) from None
            tensors = encode_outputs(outputs, req, answered.manifest)
            resp = {"model_name": answered.name, "model_version": answered.version, "outputs": tensors}
            if req.id is not None:
                resp["id"] = req.id
            try:
                # NaN/Infinity tokens (as Python's and Triton's JSON readers accept) only for models whose
                # manifest declares non-finite values legitimate; otherwise they mean a broken model.
                text = json.dumps(resp, allow_nan=answered.manifest.allow_non_finite)
            except ValueError:
                text = None
        except RequestError as exc:
            svc.metrics.observe_request(label, time.perf_counter() - t0, "client_error")
            return _error(exc.status, str(exc))
        except RuntimeBackendError as exc:
            svc.metrics.observe_request(label, time.perf_counter() - t0, "server_error")
            svc.report_error(f"inference failed: {exc}")
            return _error(500, f"inference failed: {exc}")
        if text is None:
            svc.metrics.observe_request(label, time.perf_counter() - t0, "server_error")
            svc.report_error("the model produced non-finite outputs")
            return _error(500, "the model produced non-finite outputs, which JSON cannot carry")
        svc.metrics.observe_request(label, time.perf_counter() - t0, "ok")
        try:
            svc.drift.observe(feeds, outputs, answered.manifest.labels)
        except Exception:  # noqa: BLE001 - drift statistics must never fail a request
            svc.metrics.errors.labels("drift").inc()
        return Response(text, media_type="application/json")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(request, name, version)

    @app.get("/metrics")
    async def metrics() -> Response:
        if svc.batcher is not None:
            svc.metrics.queue_depth.set(svc.batcher.depth)
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise RequestError("invalid Content-Length header") from None
        if n > limit:
            raise RequestError(f"request body of {n} bytes is over the {limit}-byte limit", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body is over the {limit}-byte limit", status=413)
        chunks.append(chunk)
    return b"".join(chunks)

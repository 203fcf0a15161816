"""The v2 HTTP server with the fake runtime: protocol shapes, every 4xx, metrics, and a fuzz test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_fakes import fake_model
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.agent.batching import DynamicBatcher
from devices.agent.host import ModelHost
from devices.agent.server import InferenceService, create_app


def _client(model=None, batching=False, max_body=64 * 1024):
    host = ModelHost()
    host.swap(model or fake_model())
    batcher = DynamicBatcher(host.run, max_batch=8, max_delay_ms=1).start() if batching else None
    svc = InferenceService(host, batcher=batcher, max_body_bytes=max_body)
    return TestClient(create_app(svc)), svc


def _req(data=None, shape=(1, 4), datatype="FP32", name="input", **extra):
    data = data if data is not None else list(range(int(np.prod(shape))))
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}], **extra}


def test_health_metadata_and_infer():
    c, _ = _client()
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get("/v2/models/fake").json()
    assert meta["name"] == "fake" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    r = c.post("/v2/models/fake/infer", json=_req([[1, 2, 3, 4], [5, 6, 7, 8]], shape=(2, 4), id="abc"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "fake" and body["model_version"] == "1" and body["id"] == "abc"
    (out,) = body["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [2, 3]
    np.testing.assert_allclose(out["data"], [2.5, 3.5, 4.5, 6.5, 7.5, 8.5])
    r = c.post("/v2/models/fake/versions/1/infer", json=_req())
    assert r.status_code == 200


def test_not_ready_without_a_model():
    svc = InferenceService(ModelHost())
    c = TestClient(create_app(svc))
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 503
    r = c.post("/v2/models/fake/infer", json=_req())
    assert r.status_code == 503 and "no model" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v2/models/other/infer", _req(), 404, "unknown model 'other'"),
        ("/v2/models/fake/versions/7/infer", _req(), 404, "no version '7'"),
        ("/v2/models/fake/infer", _req(name="inp"), 400, "unknown input 'inp'"),
        ("/v2/models/fake/infer", _req(shape=(1, 5)), 400, "shape [1, 5] does not match"),
        ("/v2/models/fake/infer", _req(datatype="INT64"), 400, "datatype INT64 does not match"),
        ("/v2/models/fake/infer", _req(datatype="FLOAT"), 400, "unknown datatype 'FLOAT'"),
        ("/v2/models/fake/infer", _req(data=[1, 2, 3]), 400, "3 elements given, shape [1, 4] needs 4"),
        ("/v2/models/fake/infer", _req(data=[1, 2, "x", 4]), 400, "expected numbers"),
        ("/v2/models/fake/infer", _req(data=[[1, 2], [3, [4]]]), 400, "does not follow shape"),
        ("/v2/models/fake/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/fake/infer", {"inputs": [{"name": "input"}]}, 400, "shape"),
        ("/v2/models/fake/infer", [1, 2], 400, "JSON object"),
        ("/v2/models/fake/infer", {**_req(), "outputs": [{"name": "nope"}]}, 400, "unknown output(s) nope"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(path, body, status, needle):
    c, _ = _client()
    r = c.post(path, json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert c.post("/v2/models/fake/infer", json=_req()).status_code == 200  # still serving


def test_non_finite_values_are_refused_unless_the_manifest_allows_them():
    c, _ = _client()
    body = json.dumps(_req()).replace("[0, 1, 2, 3]", "[0, NaN, 2, Infinity]")
    r = c.post("/v2/models/fake/infer", content=body)
    assert r.status_code == 400 and "NaN or infinite" in r.json()["error"]
    c2, _ = _client(fake_model(allow_non_finite=True))
    assert c2.post("/v2/models/fake/infer", content=body.replace("NaN", "1")).status_code == 200


def test_malformed_json_and_body_limit():
    c, _ = _client(max_body=2048)
    r = c.post("/v2/models/fake/infer", content=b"{not json")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = c.post("/v2/models/fake/infer", content=b"[" + b"1," * 5000 + b"1]")
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = c.post("/v2/models/fake/infer", content=b"[" * 1000 + b"]" * 1000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]


def test_metrics_count_requests_errors_latency_and_model():
    c, _ = _client()
    c.post("/v2/models/fake/infer", json=_req())
    c.post("/v2/models/fake/infer", json=_req(name="bad"))
    text = c.get("/metrics").text
    assert 'edgekit_agent_requests_total{model="fake",outcome="ok"} 1.0' in text
    assert 'edgekit_agent_requests_total{model="fake",outcome="client_error"} 1.0' in text
    assert "edgekit_agent_request_latency_seconds_bucket" in text
    assert "edgekit_agent_batch_size_bucket" in text
    assert "edgekit_agent_ota_state" in text


def test_batched_path_gives_the_same_answers():
    c, svc = _client(batching=True)
    try:
        r = c.post("/v2/models/fake/infer", json=_req([[1, 2, 3, 4]]))
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], [2.5, 3.5, 4.5])
    finally:
        svc.batcher.stop()


def test_drift_statistics_follow_requests():
    c, svc = _client()
    for _ in range(3):
        c.post("/v2/models/fake/infer", json=_req([1, 2, 3, 4]))
    d = svc.drift.snapshot()
    assert d.inputs["input"].count == 12 and d.inputs["input"].mean == pytest.approx(2.5)
    assert d.predictions == {"z": 3}  # fake output = mean + [0, 1, 2] → class 2 ("z")
    assert 0 < d.confidence_mean < 1


# --- fuzz: thousands of malformed requests; never a 5xx, never a crash ----------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)
_input = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "other", ""]) | st.text(max_size=5) | st.integers(),
        "shape": st.lists(st.integers(-3, 6), max_size=4) | _json,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32"]) | _json,
        "data": st.lists(st.floats(allow_nan=True) | st.integers(-2**64, 2**64) | st.booleans() | st.text(max_size=2),
                         max_size=30) | _json,
        "parameters": _json,
    },
)
_body = st.fixed_dictionaries({}, optional={"inputs": st.lists(_input, max_size=3) | _json,
                                            "outputs": _json, "id": _json, "parameters": _json}) | _json


@pytest.fixture(scope="module")
def fuzz_client():
    c, _ = _client()
    return c


@settings(max_examples=1400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_body, path=st.sampled_from(["/v2/models/fake/infer", "/v2/models/x/infer", "/v2/models/fake/versions/1/infer"]))
def test_fuzz_structured_bodies_never_5xx(fuzz_client, body, path):
    r = fuzz_client.post(path, content=json.dumps(body, allow_nan=True))
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "error" in r.json()


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes_never_5xx(fuzz_client, raw):
    r = fuzz_client.post("/v2/models/fake/infer", content=raw)
    assert 400 <= r.status_code < 500


def test_fuzz_left_the_server_healthy(fuzz_client):
    assert fuzz_client.get("/v2/health/ready").status_code == 200
    assert fuzz_client.post("/v2/models/fake/infer", json=_req()).status_code == 200


def test_backend_failure_is_a_500_reported_once_and_the_server_keeps_serving():
    from agent_fakes import fake_manifest

    from devices.agent.host import LoadedModel
    from runtimes.fake import FakeSession

    host = ModelHost()
    host.swap(LoadedModel(fake_manifest(), FakeSession(fail_every=2), runtime="fake"))
    errors: list[str] = []
    c = TestClient(create_app(InferenceService(host, on_error=errors.append)))
    statuses = [c.post("/v2/models/fake/infer", json=_req()).status_code for _ in range(4)]
    assert statuses == [200, 500, 200, 500]
    assert len(errors) == 2 and "scripted failure" in errors[0]
    assert 'outcome="server_error"} 2.0' in c.get("/metrics").text


def test_agent_rate_limits_inference_error_events(tmp_path, bundles):
    from devices.agent.agent import Agent
    from devices.agent.config import load_config

    cfg = load_config(None, state_dir=str(tmp_path / "s"), profile="x86-avx2",
                      ota={"trusted_keys": [str(bundles["pub"])]})
    agent = Agent(cfg)
    seen = []
    agent._event = lambda kind, message, **kw: seen.append((kind, kw["data"]))
    for _ in range(5):
        agent._inference_error("boom")
    assert seen == [("inference.error", {"similar_errors_since_last_event": 0})]
    agent._last_error_event -= 120
    agent._inference_error("boom")
    assert seen[-1] == ("inference.error", {"similar_errors_since_last_event": 4})


def test_chunked_body_over_the_limit_is_413():
    c, _ = _client(max_body=2048)

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = c.post("/v2/models/fake/infer", content=chunks())
    assert r.status_code == 413


def test_malformed_requests_are_client_errors_not_model_errors():
    """Rollout gates judge a model by ``errors``/``requests``: a misbehaving caller must not count."""
    from agent_fakes import fake_manifest

    from devices.agent.host import LoadedModel
    from runtimes.fake import FakeSession

    c, svc = _client(LoadedModel(fake_manifest(), FakeSession(fail_every=3), runtime="fake"))
    for _ in range(4):
        assert c.post("/v2/models/fake/infer", content=b"{not json").status_code == 400
    codes = [c.post("/v2/models/fake/infer", json=_req()).status_code for _ in range(3)]
    assert codes == [200, 200, 500]
    requests, errors, client_errors, latency = svc.metrics.interval.take()
    assert (requests, errors, client_errors) == (3, 1, 4)
    assert latency.p50_ms is not None

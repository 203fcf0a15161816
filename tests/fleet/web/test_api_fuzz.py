"""Bad input anywhere in the API is a 4xx with a message, never a 500 (property-based)."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
segment = st.text(min_size=1, max_size=40).map(lambda s: quote(s, safe=""))
query_value = st.text(max_size=60)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _ok(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["detail"]


@FUZZ
@given(seg=segment, seg2=segment)
def test_path_parameters(client, admin_h, seg, seg2):
    for path in (f"/api/v1/devices/{seg}", f"/api/v1/bundles/{seg}/{seg2}", f"/api/v1/bundles/{seg}/{seg2}/download",
                 f"/api/v1/rollouts/{seg}", f"/api/v1/rollouts/{seg}/devices", f"/api/v1/telemetry/{seg}",
                 f"/api/v1/telemetry/{seg}/events"):
        _ok(client.get(path, headers=admin_h))
    for verb in ("pause", "resume", "abort"):
        _ok(client.post(f"/api/v1/rollouts/{seg}/{verb}", headers=admin_h))
    _ok(client.delete(f"/api/v1/tokens/{seg}", headers=admin_h))


@FUZZ
@given(selector=query_value, online=query_value, limit=query_value, since=query_value, action=query_value)
def test_query_parameters(client, read_h, selector, online, limit, since, action):
    _ok(client.get("/api/v1/devices", params={"selector": selector, "online": online, "limit": limit},
                   headers=read_h))
    _ok(client.get("/api/v1/rollouts", params={"state": selector, "limit": limit}, headers=read_h))
    _ok(client.get("/api/v1/audit", params={"action": action, "before_seq": limit}, headers=read_h))
    _ok(client.get("/api/v1/audit/verify", params={"head_seq": limit, "head_hash": action}, headers=read_h))
    _ok(client.get("/api/v1/bundles", params={"name": selector}, headers=read_h))


@FUZZ
@given(body=json_value)
def test_json_bodies(client, admin_h, body):
    raw = json.dumps(body).encode()  # NaN / Infinity included, as a sloppy client would send them
    h = {**admin_h, "content-type": "application/json"}
    _ok(client.post("/api/v1/rollouts", content=raw, headers=h))
    _ok(client.post("/api/v1/tokens", content=raw, headers=h))
    _ok(client.patch("/api/v1/devices/cam-1", content=raw, headers=h))


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["bundle", "selector", "waves", "soak_s", "max_failure_rate",
                                                "max_p95_regression", "install_timeout_s"]), json_value, max_size=7))
def test_rollout_fields(client, admin_h, fields):
    _ok(client.post("/api/v1/rollouts", content=json.dumps(fields).encode(),
                    headers={**admin_h, "content-type": "application/json"}))


@FUZZ
@given(token=st.text(max_size=80))
def test_tokens(client, token):
    try:
        headers = {"Authorization": f"Bearer {token}"}
        r = client.get("/api/v1/devices", headers=headers)
    except UnicodeEncodeError:  # httpx refuses non-latin-1 header values before sending
        return
    assert r.status_code == 401

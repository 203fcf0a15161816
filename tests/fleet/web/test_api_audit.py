"""The audit API: admin actions are listed newest first, and verify detects raw-SQL tampering."""

from __future__ import annotations

import pytest
from fleet_web_helpers import drop_guards
from sqlalchemy import text

#: run on SQLite and on the real PostgreSQL server (skipped, naming what is missing, without one)
BOTH_DATABASES = pytest.mark.parametrize(
    "fleet_db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True)



def _make_history(client, admin_h):
    for name in ("a", "b", "c"):
        assert client.post("/api/v1/tokens", json={"name": name}, headers=admin_h).status_code == 201


def test_list_paging_and_filter(client, admin_h, read_h):
    _make_history(client, admin_h)
    page = client.get("/api/v1/audit", params={"limit": 2}, headers=read_h).json()
    assert [e["seq"] for e in page["entries"]] == [3, 2]
    older = client.get("/api/v1/audit", params={"before_seq": 2}, headers=read_h).json()
    assert [e["seq"] for e in older["entries"]] == [1]
    assert older["entries"][0]["details"]["name"] == "a"
    assert client.get("/api/v1/audit", params={"action": "rollout."}, headers=read_h).json()["count"] == 0
    by_target = client.get("/api/v1/audit", params={"target": "token:"}, headers=read_h).json()
    assert by_target["count"] == 3
    by_actor = client.get("/api/v1/audit", params={"actor": "token:test-admin"}, headers=read_h).json()
    assert by_actor["count"] == 3
    assert client.get("/api/v1/audit", params={"actor": "token:nobody"}, headers=read_h).json()["count"] == 0
    # LIKE wildcards in a filter are literal characters, not patterns
    assert client.get("/api/v1/audit", params={"target": "%"}, headers=read_h).json()["count"] == 0
    assert client.get("/api/v1/audit", params={"limit": 0}, headers=read_h).status_code == 422


@BOTH_DATABASES
def test_verify_detects_tampering(client, admin_h, read_h, fleet_ctx):
    _make_history(client, admin_h)
    ok = client.get("/api/v1/audit/verify", headers=read_h).json()
    assert ok["ok"] is True and ok["entries"] == 3 and ok["head_seq"] == 3
    drop_guards(fleet_ctx.database)  # the app made the table append-only; an attacker drops that first
    with fleet_ctx.database.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET actor = 'innocent' WHERE seq = 2"))
    bad = client.get("/api/v1/audit/verify", headers=read_h).json()
    assert bad["ok"] is False and bad["bad_seq"] == 2 and "entry 2 was modified" in bad["error"]


def test_verify_with_noted_head_detects_truncation(client, admin_h, read_h, fleet_ctx):
    _make_history(client, admin_h)
    head = client.get("/api/v1/audit/verify", headers=read_h).json()
    drop_guards(fleet_ctx.database)
    with fleet_ctx.database.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    params = {"head_seq": head["head_seq"], "head_hash": head["head_hash"]}
    bad = client.get("/api/v1/audit/verify", params=params, headers=read_h).json()
    assert bad["ok"] is False and "tail truncated" in bad["error"]
    assert client.get("/api/v1/audit/verify", params={"head_seq": 1, "head_hash": "zz"},
                      headers=read_h).status_code == 422

"""API tokens: stored hashed, verified, revoked, scoped; the first start creates one admin token."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from edgekit.errors import ConfigError, FleetError
from fleet.auth import create_token, ensure_admin_token, list_tokens, revoke_token, verify_token


def test_token_is_stored_hashed_and_verifies(web_db):
    with web_db.session() as s:
        secret, info = create_token(s, "ci", "read")
    assert secret.startswith(f"ekt_{info.id}_")
    with web_db.session() as s:
        stored = s.execute(text("SELECT secret_sha256 FROM api_tokens")).scalar_one()
        p = verify_token(s, secret)
    assert secret.split("_", 2)[2] not in stored and len(stored) == 64
    assert p is not None and p.scope == "read" and p.name == "ci" and not p.is_admin


@pytest.mark.parametrize("bad", ["", "nonsense", "ekt_0000000000000000_" + "a" * 43])
def test_invalid_tokens_rejected(web_db, bad):
    with web_db.session() as s:
        create_token(s, "ci", "admin")
        assert verify_token(s, bad) is None


def test_wrong_secret_for_real_id_rejected(web_db):
    with web_db.session() as s:
        secret, info = create_token(s, "ci", "admin")
        forged = f"ekt_{info.id}_{'x' * 43}"
        assert verify_token(s, forged) is None
        assert verify_token(s, secret) is not None


def test_revoke(web_db):
    with web_db.session() as s:
        secret, info = create_token(s, "ci", "admin")
    with web_db.session() as s:
        revoked = revoke_token(s, info.id)
    assert revoked.revoked_at is not None
    with web_db.session() as s:
        assert verify_token(s, secret) is None
        with pytest.raises(FleetError, match="no API token"):
            revoke_token(s, "ffffffffffffffff")


def test_bad_scope_and_name(web_db):
    with web_db.session() as s:
        with pytest.raises(ConfigError, match="scope"):
            create_token(s, "x", "root")
        with pytest.raises(ConfigError, match="name"):
            create_token(s, "  ", "read")


def test_last_used_is_recorded(web_db):
    with web_db.session() as s:
        secret, _ = create_token(s, "ci", "read")
    with web_db.session() as s:
        verify_token(s, secret)
    with web_db.session() as s:
        (tok,) = list_tokens(s)
    assert tok.last_used_at is not None


def test_ensure_admin_token_only_once(web_db):
    first = ensure_admin_token(web_db)
    assert first and first.startswith("ekt_")
    assert ensure_admin_token(web_db) is None
    with web_db.session() as s:
        assert verify_token(s, first).is_admin
        actions = s.execute(text("SELECT action FROM audit_log")).scalars().all()
    assert actions == ["token.create"]


def test_concurrent_first_starts_mint_one_admin_token(web_db):
    import threading

    results: list[str | None] = []
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        results.append(ensure_admin_token(web_db))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r]) == 1
    with web_db.session() as s:
        assert len(list_tokens(s)) == 1

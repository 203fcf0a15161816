"""The hash-chained audit log: appends chain, and any edit, deletion or reordering is detected."""

from __future__ import annotations

import threading

import pytest
from fleet_web_helpers import drop_guards
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fleet.audit import GENESIS, head, record, verify_chain


def _fill(db, n=5):
    for i in range(n):
        with db.session() as s:
            record(s, "tester", "device.tag", f"device:d{i}", {"tags": ["a", f"t{i}"], "n": i, "f": 0.1})


def _verify(db, **kw):
    with db.session() as s:
        return verify_chain(s, **kw)


def test_entries_chain_and_verify(web_db):
    _fill(web_db)
    with web_db.session() as s:
        rows = s.execute(text("SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq")).all()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1] == GENESIS
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, 5))
    report = _verify(web_db)
    assert report.ok and report.entries == 5 and report.head_seq == 5 and report.head_hash == rows[-1][2]


def test_empty_log_verifies(web_db):
    r = _verify(web_db)
    assert r.ok and r.entries == 0 and r.head_hash == GENESIS


@pytest.mark.parametrize(
    "sql, fragment, bad",
    [
        ("UPDATE audit_log SET target = 'device:evil' WHERE seq = 3", "entry 3 was modified", 3),
        ("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1", "entry 1 was modified", 1),
        ("DELETE FROM audit_log WHERE seq = 2", "entries 2..2 are missing", 2),
    ],
)
def test_raw_sql_tampering_is_detected(web_db, sql, fragment, bad):
    _fill(web_db)
    with web_db.engine.begin() as c:
        c.execute(text(sql))
    r = _verify(web_db)
    assert not r.ok
    assert fragment in r.error
    assert r.bad_seq == bad


def test_edited_details_detected(web_db):
    _fill(web_db)
    with web_db.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET details = :d WHERE seq = 4"), {"d": '{"tags": ["a"], "n": 3, "f": 0.1}'})
    r = _verify(web_db)
    assert not r.ok and r.bad_seq == 4


def test_reordered_entries_detected(web_db):
    _fill(web_db)
    # swap the contents of entries 2 and 3, keeping seq numbers contiguous
    with web_db.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET seq = 1000 WHERE seq = 2"))
        c.execute(text("UPDATE audit_log SET seq = 2 WHERE seq = 3"))
        c.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 1000"))
    r = _verify(web_db)
    assert not r.ok and r.bad_seq == 2
    assert "does not chain" in r.error


def test_rehashed_forgery_breaks_the_next_link(web_db):
    """An attacker who recomputes an edited entry's own hash still breaks the following entry's link."""
    from fleet.audit import entry_hash

    _fill(web_db)
    with web_db.session() as s:
        row = s.execute(text("SELECT seq, ts, actor, action, target, details, prev_hash FROM audit_log WHERE seq = 2")).one()
    from datetime import datetime

    ts = row.ts if isinstance(row.ts, datetime) else datetime.fromisoformat(str(row.ts))
    forged = entry_hash(2, ts, row.actor, row.action, "device:forged", {"tags": ["a", "t1"], "n": 1, "f": 0.1},
                        row.prev_hash)
    with web_db.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET target='device:forged', hash=:h WHERE seq=2"), {"h": forged})
    r = _verify(web_db)
    assert not r.ok and r.bad_seq == 3


def test_tail_truncation_detected_with_noted_head(web_db):
    _fill(web_db)
    with web_db.session() as s:
        noted = head(s)
    assert noted[0] == 5
    assert _verify(web_db, expected_head=noted).ok
    with web_db.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 5"))
    assert _verify(web_db).ok  # a shorter chain is self-consistent...
    r = _verify(web_db, expected_head=noted)  # ...but not with the noted head
    assert not r.ok and "tail truncated" in r.error


def test_concurrent_appends_keep_one_chain(web_db):
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(10):
                with web_db.session() as s:
                    record(s, f"w{i}", "x.y", str(j))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r = _verify(web_db)
    assert r.ok and r.entries == 40


def test_entry_rolls_back_with_its_action(web_db):
    with pytest.raises(RuntimeError), web_db.session() as s:
        record(s, "a", "b", "c")
        raise RuntimeError("the action failed")
    assert _verify(web_db).entries == 0


def test_record_and_verify_accept_a_database_or_context(web_db):
    from types import SimpleNamespace

    from edgekit.errors import FleetError

    record(web_db, "ops", "x.y", "t1")
    record(SimpleNamespace(database=web_db), "ops", "x.z", "t2")
    assert verify_chain(web_db).entries == 2
    assert head(SimpleNamespace(database=web_db))[0] == 2
    with pytest.raises(FleetError, match="needs a Session"):
        record(object(), "ops", "x", "y")


def test_database_refuses_edits_and_deletes(web_db):
    from sqlalchemy.exc import DatabaseError

    from fleet.audit import enforce_append_only

    _fill(web_db, 3)
    enforce_append_only(web_db)
    enforce_append_only(web_db)  # idempotent
    for sql in ("UPDATE audit_log SET actor = 'x' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 3"):
        with pytest.raises(DatabaseError, match="append-only"), web_db.engine.begin() as c:
            c.execute(text(sql))
    if web_db.engine.dialect.name == "postgresql":
        with pytest.raises(DatabaseError, match="append-only"), web_db.engine.begin() as c:
            c.execute(text("TRUNCATE audit_log"))
    with web_db.session() as s:
        record(s, "tester", "still.appends", "x")  # appending is unaffected (incl. SQLite's lock trick)
    assert _verify(web_db).ok and _verify(web_db).entries == 4
    # someone with DDL rights drops the guard and edits: the chain still catches it
    drop_guards(web_db)
    with web_db.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET actor = 'x' WHERE seq = 2"))
    assert _verify(web_db).bad_seq == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=8), data=st.data())
def test_any_single_edit_is_pinpointed(sqlite_db, n, data):
    """Property: whatever one field of whichever entry is changed, verify names exactly that entry."""
    with sqlite_db.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log"))
    for i in range(n):
        with sqlite_db.session() as s:
            record(s, f"actor{i}", "act.ion", f"t{i}", {"i": i, "tags": ["x"]})
    victim = data.draw(st.integers(min_value=1, max_value=n), label="entry")
    column, value = data.draw(st.sampled_from([
        ("actor", "mallory"), ("action", "other.action"), ("target", "elsewhere"),
        ("details", '{"i": -1}'), ("ts", "2001-01-01 00:00:00.000000"), ("prev_hash", "f" * 64),
        ("hash", "e" * 64),
    ]), label="edit")
    with sqlite_db.engine.begin() as c:
        c.execute(text(f"UPDATE audit_log SET {column} = :v WHERE seq = :s"), {"v": value, "s": victim})
    r = _verify(sqlite_db)
    assert not r.ok
    assert r.bad_seq == victim, (column, victim, r)
    assert r.entries == victim - 1  # everything before it still verified

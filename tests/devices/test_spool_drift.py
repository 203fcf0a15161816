"""Spool (SQLite WAL store-and-forward) and drift statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devices.agent.drift import DriftMonitor, RunningStats
from devices.agent.spool import Spool


def _msg(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_enqueue_allocates_seq_and_keeps_order(tmp_path):
    sp = Spool(tmp_path / "s.sqlite", max_messages=100)
    ids = [sp.enqueue("t", _msg, deferred=False) for _ in range(5)]
    assert [s for _, s in ids] == [1, 2, 3, 4, 5]
    rows = sp.pending()
    assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2, 3, 4, 5]
    sp.ack(rows[0].id)
    assert [json.loads(r.payload)["seq"] for r in sp.pending(after_id=rows[1].id)] == [3, 4, 5]
    assert len(sp) == 4
    assert sp._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bounded_with_oldest_first_eviction_counted(tmp_path):
    sp = Spool(tmp_path / "s.sqlite", max_messages=10)
    for _ in range(25):
        sp.enqueue("t", _msg, deferred=True)
    assert len(sp) == 10 and sp.evicted == 15
    assert [json.loads(r.payload)["seq"] for r in sp.pending()] == list(range(16, 26))


def test_survives_restart_with_seq_and_messages_marked_deferred(tmp_path):
    p = tmp_path / "s.sqlite"
    sp = Spool(p, max_messages=50)
    for _ in range(3):
        sp.enqueue("t", _msg, deferred=False)
    sp.close()
    sp2 = Spool(p, max_messages=50)
    rows = sp2.pending()
    assert len(rows) == 3 and all(r.deferred for r in rows)
    _, seq = sp2.enqueue("t", _msg, deferred=False)
    assert seq == 4, "seq counter must persist across restarts"


def test_defer_all_marks_pending(tmp_path):
    sp = Spool(tmp_path / "s.sqlite")
    sp.enqueue("t", _msg, deferred=False)
    sp.defer_all()
    assert sp.pending()[0].deferred


def test_failed_build_rolls_back_the_seq(tmp_path):
    sp = Spool(tmp_path / "s.sqlite")

    def boom(seq):
        raise ValueError("bad payload")

    with pytest.raises(ValueError):
        sp.enqueue("t", boom, deferred=False)
    assert sp.seq == 0 and len(sp) == 0


def test_corrupt_spool_is_a_clear_error(tmp_path):
    p = tmp_path / "s.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    from edgekit.errors import AgentError

    with pytest.raises(AgentError, match="spool"):
        Spool(p)


def test_running_stats_match_numpy():
    rs = RunningStats()
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3, 2, size=n) for n in (1, 10, 100, 7)]
    for c in chunks:
        rs.update(c)
    allv = np.concatenate(chunks)
    assert rs.count == allv.size
    assert rs.mean == pytest.approx(allv.mean())
    assert rs.std == pytest.approx(allv.std())


def test_drift_histogram_confidence_and_interval_reset():
    d = DriftMonitor(labels=["cat", "dog"])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    d.observe({"x": np.ones((3, 2), np.float32)}, {"p": probs})
    s = d.snapshot()
    assert s.predictions == {"cat": 2, "dog": 1}
    assert s.confidence_mean == pytest.approx((0.9 + 0.8 + 0.6) / 3, rel=1e-5)
    assert s.inputs["x"].count == 6 and s.inputs["x"].mean == 1.0
    s2 = d.snapshot()
    assert s2.predictions == {} and s2.confidence_mean is None
    assert s2.inputs["x"].count == 6, "input statistics run since start"

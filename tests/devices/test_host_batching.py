"""ModelHost hot swap and DynamicBatcher, with the fake runtime."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from agent_fakes import fake_model

from devices.agent.batching import DynamicBatcher
from devices.agent.host import ModelHost, NoModelError
from edgekit.errors import InputError


def test_no_model_is_a_clear_error():
    with pytest.raises(NoModelError):
        ModelHost().run({"input": np.zeros((1, 4), np.float32)})


def test_swap_waits_for_in_flight_requests_before_closing():
    host = ModelHost()
    old, new = fake_model("1"), fake_model("2")
    host.swap(old)
    entered, release = threading.Event(), threading.Event()

    def slow_request():
        with host.lease() as m:
            entered.set()
            release.wait(5)
            return m.version, m.session.run({"input": np.ones((1, 4), np.float32)})

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(slow_request)
        entered.wait(5)
        assert host.swap(new) is old
        assert not old.session.closed, "closed under a running request"
        assert host.run({"input": np.ones((1, 4), np.float32)})[0] is new
        release.set()
        version, out = fut.result(5)
    assert version == "1" and out["output"].shape == (1, 3)
    assert old.session.closed, "old session not closed after it drained"
    assert not new.session.closed


def test_swap_closes_an_idle_model_at_once():
    host = ModelHost()
    old = fake_model("1")
    host.swap(old)
    host.swap(fake_model("2"))
    assert old.session.closed


def _rows(n, start=0.0):
    return np.arange(start, start + n * 4, dtype=np.float32).reshape(n, 4)


def test_batcher_merges_concurrent_requests_and_splits_results():
    host = ModelHost()
    host.swap(fake_model(latency_ms=20))
    sizes = []
    b = DynamicBatcher(host.run, max_batch=8, max_delay_ms=30, on_batch=sizes.append).start()
    try:
        futs = [b.submit({"input": _rows(1, 100 * i)}) for i in range(6)]
        results = [f.result(5) for f in futs]
    finally:
        b.stop()
    for i, (_, out) in enumerate(results):
        expected = _rows(1, 100 * i).mean(axis=1)[:, None] + np.arange(3)
        np.testing.assert_allclose(out["output"], expected, rtol=1e-6)
    assert max(sizes) > 1, f"nothing was merged: {sizes}"
    assert sum(sizes) == 6


def test_batcher_respects_max_batch_and_groups_by_shape():
    host = ModelHost()
    host.swap(fake_model(latency_ms=5))
    sizes = []
    b = DynamicBatcher(host.run, max_batch=4, max_delay_ms=50, on_batch=sizes.append).start()
    try:
        futs = [b.submit({"input": _rows(2, i)}) for i in range(5)]
        for f in futs:
            assert f.result(5)[1]["output"].shape == (2, 3)
    finally:
        b.stop()
    assert max(sizes) <= 4 and sum(sizes) == 10


def test_one_bad_request_does_not_fail_its_batch_neighbours():
    host = ModelHost()
    host.swap(fake_model(latency_ms=5))
    b = DynamicBatcher(host.run, max_batch=8, max_delay_ms=50).start()
    try:
        good = [b.submit({"input": _rows(1, i)}) for i in range(3)]
        bad = b.submit({"input": np.zeros((1, 5), np.float32)})  # wrong width: grouped apart, fails alone
        assert all(f.result(5)[1]["output"].shape == (1, 3) for f in good)
        with pytest.raises(InputError):
            bad.result(5)
    finally:
        b.stop()


def test_stopped_batcher_fails_waiting_requests_instead_of_hanging():
    host = ModelHost()
    host.swap(fake_model(latency_ms=200))
    b = DynamicBatcher(host.run, max_batch=1, max_delay_ms=0).start()
    futs = [b.submit({"input": _rows(1)}) for _ in range(5)]
    time.sleep(0.05)
    b.stop()
    done = 0
    for f in futs:
        try:
            f.result(5)
            done += 1
        except Exception:  # noqa: BLE001
            pass
    assert all(f.done() for f in futs) and done < 5


def test_batcher_survives_cancelled_requests_and_a_failing_callback():
    """A caller that gives up, or a metrics callback that raises, never kills the batcher thread."""
    host = ModelHost()
    host.swap(fake_model(latency_ms=30))
    calls = []

    def flaky_callback(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("metrics backend hiccup")

    b = DynamicBatcher(host.run, max_batch=4, max_delay_ms=5, on_batch=flaky_callback).start()
    try:
        blocker = b.submit({"input": _rows(1, 0)})  # occupies the thread while the next ones queue
        time.sleep(0.01)
        doomed = [b.submit({"input": _rows(1, i)}) for i in range(3)]
        assert all(f.cancel() for f in doomed), "queued futures can still be cancelled"
        with pytest.raises(Exception, match="metrics backend hiccup"):
            blocker.result(5)
        after = b.submit({"input": _rows(2, 7)})
        _, out = after.result(5)
        assert out["output"].shape == (2, 3)
        assert b.alive
    finally:
        b.stop()

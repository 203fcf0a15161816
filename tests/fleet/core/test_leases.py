"""The rollout lease: with several replicas, exactly one advances rollouts; another takes over when it dies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fleet.leases import acquire, release
from fleet.service import RolloutTicker


def test_lease_is_exclusive_renewable_and_expires(db):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert acquire(db, "rollouts", "a", 10, now=t0)
    assert not acquire(db, "rollouts", "b", 10, now=t0 + timedelta(seconds=1))
    assert acquire(db, "rollouts", "a", 10, now=t0 + timedelta(seconds=5)), "the holder renews"
    assert not acquire(db, "rollouts", "b", 10, now=t0 + timedelta(seconds=14))
    assert acquire(db, "rollouts", "b", 10, now=t0 + timedelta(seconds=16)), "expired: another takes over"
    assert not acquire(db, "rollouts", "a", 10, now=t0 + timedelta(seconds=17))
    release(db, "rollouts", "b")
    assert acquire(db, "rollouts", "a", 10, now=t0 + timedelta(seconds=18)), "released: free at once"
    assert acquire(db, "other", "b", 10, now=t0 + timedelta(seconds=18)), "leases are independent"


@pytest.mark.integration
def test_two_replica_tickers_one_leads(postgres_url, registry, publisher):
    """On a real PostgreSQL: two replicas' tickers, exactly one ticks; the other takes over on its stop."""
    from fleet.db.base import Database
    from fleet.db.migrate import upgrade
    from fleet.registry import BundleRegistry
    from fleet.rollouts import RolloutManager

    pg = Database(postgres_url)
    upgrade(pg)
    reg = BundleRegistry(pg, registry.store, registry.trusted_keys, "http://x")
    ticks = {"a": 0, "b": 0}

    class Counting(RolloutManager):
        def __init__(self, name):
            super().__init__(pg, reg, publisher)
            self.name = name

        def tick(self):
            ticks[self.name] += 1

    a = RolloutTicker(Counting("a"), 0.5, holder="replica-a")
    b = RolloutTicker(Counting("b"), 0.5, holder="replica-b")
    for _ in range(3):
        a.step()
        b.step()
    assert ticks == {"a": 3, "b": 0} and a.leading and not b.leading
    a.stop()  # a clean stop releases the lease
    assert b.step() and ticks["b"] == 1 and b.leading
    assert not a.step() and ticks["a"] == 3, "the lease is b's now"
    pg.dispose()

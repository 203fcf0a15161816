"""Chaos: the agent's spool overflows while the broker is away, and its disk fills up.

Guarantees checked: every seq the agent allocated either reaches the fleet or is counted as evicted
(exactly those, the oldest first, and the count is reported in telemetry); a full disk never kills the
agent or its inference path, and it resumes publishing when space returns.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time

import pytest
from chaoskit import AgentProcess, long_mode, wait_until
from test_chaos_broker import spool_state

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

DEVICE = "agent-0"


def test_bounded_spool_evicts_oldest_and_counts_them(pbroker, collector, versions, signing_keys, tmp_path, chaos_record):
    _, _, keydir = signing_keys
    outage = 8.0 if long_mode() else 3.0
    agent = AgentProcess(tmp_path / "agent", broker_url=pbroker.url, device_id=DEVICE, seed=versions["1.0.0"],
                         keys_dir=keydir, telemetry_interval_s=0.05, max_spool=10).start()
    try:
        assert agent.wait_ready(60), agent.tail()
        assert wait_until(lambda: len(collector.seqs.get(DEVICE, ())) >= 5, timeout=20)
        pbroker.stop()  # graceful: this scenario is about the spool, not broker crashes
        time.sleep(outage)
        assert agent.ready()  # serving goes on without the broker
        pbroker.start()
        assert wait_until(lambda: any(t > 0 for t in _evicted_reports(collector)), timeout=30)
        # The first reports after the outage are replays built before their own eviction; live ones carry
        # the count. Give them a moment (CI once stopped a fixed 1 s sleep one report short).
        wait_until(lambda: max(_evicted_reports(collector)) >= _spool_evicted(agent), timeout=10)
    finally:
        agent.stop()
    last, evicted, held = spool_state(agent)
    missing = collector.wait_complete({DEVICE: last}, timeout=20, exclude={DEVICE: held}).get(DEVICE, [])
    chaos_record.update(outage_s=outage, seqs=last, evicted=evicted, missing=len(missing),
                        reported_evicted=max(_evicted_reports(collector)), spool_held=len(held),
                        report_lag=evicted - max(_evicted_reports(collector)))
    assert evicted > 0, "the outage should have overflowed a 10-message spool"
    # An evicted row that paho already had in flight may still arrive: evictions can over-count, never under-count.
    assert len(missing) <= evicted, f"lost {len(missing)} but the agent counted only {evicted} evictions"
    assert evicted - len(missing) <= 100, "over-count beyond the in-flight window (mqtt.max_inflight)"
    assert missing == list(range(missing[0], missing[0] + len(missing))), "evictions must be the oldest, contiguous"
    reported = max(_evicted_reports(collector))
    # What the fleet was told covers every message it lost, and never more than the agent counted. (The
    # agent's count may be one ahead: seen twice in CI, an eviction of a message paho had in flight and
    # re-sent anyway, i.e. the over-count above, was never reflected in a later report.)
    assert len(missing) <= reported <= evicted, f"reported {reported}, lost {len(missing)}, counted {evicted}"


def _spool_evicted(agent) -> int:
    """The eviction count the running agent has persisted (a read-only look into its WAL database)."""
    db = sqlite3.connect(f"file:{agent.state_dir / 'spool.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()[0])
    finally:
        db.close()


def _evicted_reports(collector) -> list[int]:
    return [t.spool_evicted for t in collector.telemetry.get(DEVICE, [])] or [0]


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only); skipped with the reason when mounting is not permitted here."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(path) -> int:
    """Write zeros until ENOSPC; returns bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            written += os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return written


def test_full_disk_never_kills_the_agent(pbroker, versions, signing_keys, tmp_path, tiny_fs, chaos_record):
    from hil.collector import WireCollector

    _, _, keydir = signing_keys
    full_for = 6.0 if long_mode() else 2.5
    with WireCollector(pbroker.host, pbroker.port, keep_payloads=True) as collector:
        agent = AgentProcess(tmp_path / "agent", broker_url=pbroker.url, device_id=DEVICE, seed=versions["1.0.0"],
                             keys_dir=keydir, telemetry_interval_s=0.05, state_dir=tiny_fs / "state").start()
        try:
            assert agent.wait_ready(60), agent.tail()
            assert wait_until(lambda: len(collector.seqs.get(DEVICE, ())) >= 5, timeout=20)
            pbroker.stop()  # graceful (a crash is another scenario): the spool has to hold everything now
            filler = tiny_fs / "filler"
            filled = _fill(filler)
            seq_before = max(collector.seqs[DEVICE])
            time.sleep(full_for)
            alive_while_full = agent.alive() and agent.ready()
            filler.unlink()
            pbroker.start()
            assert wait_until(lambda: max(collector.seqs.get(DEVICE, {0})) > seq_before + 10, timeout=30), agent.tail()
        finally:
            agent.stop()
        log = agent.tail(20_000)
        last, evicted, held = spool_state(agent)
        missing = collector.wait_complete({DEVICE: last}, timeout=20, exclude={DEVICE: held})
    expected_intervals = int(full_for / 0.05)
    chaos_record.update(full_for_s=full_for, filler_bytes=filled, alive_while_full=alive_while_full, seqs=last,
                        evicted=evicted, missing=sum(map(len, missing.values())),
                        disk_full_logged="full" in log.lower(), telemetry_intervals_while_full=expected_intervals)
    assert alive_while_full, log
    assert missing == {} and evicted == 0, missing

"""Chaos: the device lives in its own network namespace (veth to this host) and is cut off, or given
loss and delay with ``tc netem``. Skipped, with the reason, where namespaces or netem are not available.

Guarantees checked: no telemetry or event seq is lost; the device keeps serving its verified model.
"""

from __future__ import annotations

import time
from itertools import count

import pytest
from chaoskit import AgentProcess, Netns, long_mode, wait_until
from test_chaos_broker import spool_state

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

DEVICE = "agent-ns"
_index = count()


@pytest.fixture
def netns():
    ns = Netns(next(_index))
    why = ns.create()
    if why:
        pytest.skip(f"network namespaces unavailable here: {why}")
    yield ns
    ns.destroy()


@pytest.fixture
def ns_broker(netns, tmp_path):
    from hil.broker import LocalMosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    with LocalMosquitto(tmp_path / "broker", persistent=True, host=netns.host_ip) as broker:
        yield broker


def _agent(netns, broker, versions, keydir, tmp_path) -> AgentProcess:
    return AgentProcess(tmp_path / "agent", broker_url=broker.url, device_id=DEVICE, seed=versions["1.0.0"],
                        keys_dir=keydir, telemetry_interval_s=0.1, netns=netns.name, http_host=netns.ns_ip)


def test_device_cut_off_from_the_network(netns, ns_broker, versions, signing_keys, tmp_path, chaos_record):
    from hil.collector import WireCollector

    _, _, keydir = signing_keys
    cuts, cut_s = (3, 20.0) if long_mode() else (1, 4.0)
    with WireCollector(ns_broker.host, ns_broker.port) as col:
        agent = _agent(netns, ns_broker, versions, keydir, tmp_path).start()
        try:
            assert agent.wait_ready(60), agent.tail()
            assert wait_until(lambda: len(col.seqs.get(DEVICE, ())) >= 5, timeout=20)
            for _ in range(cuts):
                netns.link(False)
                time.sleep(cut_s)
                netns.link(True)
                seen = max(col.seqs[DEVICE])
                assert wait_until(lambda s=seen: max(col.seqs[DEVICE]) > s + 5, timeout=60), agent.tail()
            assert agent.ready() and agent.served_version("tiny") == "1.0.0"
        finally:
            agent.stop()
        last, evicted, held = spool_state(agent)
        missing = col.wait_complete({DEVICE: last}, timeout=20, exclude={DEVICE: held})
    chaos_record.update(cuts=cuts, cut_s=cut_s, seqs=last, missing=sum(map(len, missing.values())), evicted=evicted,
                        replayed=col.replayed, duplicates=col.duplicates)
    assert missing == {} and evicted == 0


def test_lossy_slow_link(netns, ns_broker, versions, signing_keys, tmp_path, chaos_record):
    from hil.collector import WireCollector

    why = netns.netem("loss 10% delay 50ms 20ms")
    if why:
        pytest.skip(why)
    _, _, keydir = signing_keys
    run_s = 30.0 if long_mode() else 5.0
    with WireCollector(ns_broker.host, ns_broker.port) as col:
        agent = _agent(netns, ns_broker, versions, keydir, tmp_path).start()
        try:
            assert agent.wait_ready(90), agent.tail()
            time.sleep(run_s)
        finally:
            agent.stop()
        last, evicted, held = spool_state(agent)
        missing = col.wait_complete({DEVICE: last}, timeout=30, exclude={DEVICE: held})
    chaos_record.update(netem="loss 10% delay 50ms 20ms", run_s=run_s, seqs=last,
                        missing=sum(map(len, missing.values())), duplicates=col.duplicates)
    assert missing == {} and evicted == 0

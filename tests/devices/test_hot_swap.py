"""No request fails while the model is hot-swapped under concurrent HTTP load (real onnxruntime)."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from agent_testlib import desired_for, wait_for

from edgekit.wire import Desired, decode

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batched"])
def test_no_request_fails_during_hot_swaps(agent_factory, bundles, file_server, batching):
    agent = agent_factory(bundle=str(bundles["v1"]), batching={"enabled": batching, "max_batch": 8, "max_delay_ms": 2},
                          ota={"soak_s": 0})
    url = f"http://127.0.0.1:{agent.port}/v2/models/tiny/infer"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32).ravel().tolist()
    body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x}]}
    stop = threading.Event()
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(url, json=body)
                    item = (r.status_code, r.json().get("model_version", r.text))
                except httpx.HTTPError as exc:
                    item = (-1, repr(exc))
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) > 20, 10, what="load running")
        for b in ("v2", "v1", "v2"):  # three swaps, back and forth
            shutil.copyfile(bundles[b], file_server.root / bundles[b].name)
            d = decode("desired", desired_for(agent.ota.device_id or "local", bundles[b],
                                              file_server.url(bundles[b].name), generation=len(results)), Desired)
            agent.ota.converge(d)
            assert agent.host.current.version == b[1] + ".0.0", agent.ota.last_error
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed during swaps: {failed[:3]}"
    versions = {v for _, v in results}
    assert versions == {"1.0.0", "2.0.0"}, versions
    assert agent.host.swaps >= 4

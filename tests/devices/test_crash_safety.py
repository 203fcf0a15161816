"""SIGKILL the agent process at random points of an OTA, many times; it must always serve a verified
bundle (old or new) and converge to the desired one. A longer soak: hil/bench_agent.py --crash-kills."""

from __future__ import annotations

import shutil
import time

import pytest
from agent_crash_harness import check_disk, kill_loop, served_version, start, write_config
from agent_testlib import MqttRecorder, desired_for, wait_for
from servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
DEV = "crashy"


def test_sigkill_during_ota_always_leaves_a_verified_bundle_and_converges(tmp_path, mosquitto, bundles, file_server):
    state, port = tmp_path / "state", free_port()
    cfg = write_config(tmp_path / "agent.yaml", state=state, port=port, broker_url=mosquitto.url, device_id=DEV,
                       pub=bundles["pub"], seed=bundles["v1"], soak_s=1.0)
    log = tmp_path / "agent.log"
    # First boot installs v1 (the seed); then the fleet asks for v2.
    proc = start(cfg, log)
    t0 = time.monotonic()
    try:
        wait_for(lambda: served_version(port) == "1.0.0", 60, 0.1, "first boot serving v1")
        # Kill points span start-up, boot, the OTA and the soak window, scaled to this host's speed.
        window = 1.6 * (time.monotonic() - t0) + 1.0
    finally:
        proc.kill()
        proc.wait(10)
    for b in ("v1", "v2"):
        shutil.copyfile(bundles[b], file_server.root / f"{b}.ekb")
    rec = MqttRecorder(mosquitto, DEV)

    def flip_desired(i: int) -> None:
        # Alternate the desired bundle so every run has an OTA in flight somewhere in its lifetime.
        b = "v2" if i % 2 == 0 else "v1"
        rec.publish("desired", desired_for(DEV, bundles[b], file_server.url(f"{b}.ekb"), generation=i), retain=True)

    try:
        report = kill_loop(cfg, state, bundles["pub"], port, kills=5, max_delay_s=window, log=log,
                           allowed={"1.0.0", "2.0.0"}, seed=int(time.time()), before_start=flip_desired)
        print("crash report:", report)
        assert report.kills == 5 and len(report.on_disk) == 5
        flip_desired(0)
        # Finally let it run: it must converge to v2 and mark it good.
        proc = start(cfg, log)
        try:
            wait_for(lambda: served_version(port) == "2.0.0", 60, 0.1, "convergence to v2")
            wait_for(lambda: any(r.get("ota_state") == "installed" and r["active"]["version"] == "2.0.0"
                                 for r in rec.of("reported")), 30, what="v2 installed (soaked)")
        finally:
            proc.terminate()
            proc.wait(15)
        assert check_disk(state, bundles["pub"], {"2.0.0"}) == "2.0.0"
        assert not [e for e in rec.events() if e["kind"] in ("ota.failed", "ota.rollback")], \
            "a kill must never count as a failed bundle"
        wait_for(lambda: rec.of("status") and rec.of("status")[-1]["state"] == "offline", 10, what="clean offline")
    finally:
        rec.publish("desired", b"", retain=True)
        rec.close()

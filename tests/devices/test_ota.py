"""OTA with A/B slots against real onnxruntime and a real HTTP download: success, failed golden check,
tampered/untrusted bundles, rejected desired states, crash-loop rollback, re-verification at boot."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from agent_testlib import desired_for, sha256, wait_for

from devices.agent.config import OtaConfig
from devices.agent.host import ModelHost
from devices.agent.ota import OtaHooks, OtaManager
from devices.agent.slots import SlotStore
from edgekit.errors import AgentError
from edgekit.profiles import load_profile
from edgekit.signing import load_public_key

pytestmark = pytest.mark.integration
DEVICE = "dev-1"


class Recorder:
    def __init__(self):
        self.events, self.states, self.reported, self.data = [], [], [], {}
        self.lock = threading.Lock()

    def event(self, kind, message, level="info", data=None, rollout_id=None):
        with self.lock:
            self.events.append((kind, level, message))
            self.data[kind] = data or {}

    def kinds(self):
        return [k for k, _, _ in self.events]

    def message(self, kind):
        return next(m for k, _, m in self.events if k == kind)

    def hooks(self):
        return OtaHooks(event=self.event, reported=self.reported.append, state_changed=self.states.append)


@pytest.fixture
def make_ota(tmp_path, bundles):
    managers = []

    def make(soak_s=0.2, **cfg):
        rec = Recorder()
        ota = OtaManager(OtaConfig(soak_s=soak_s, **cfg), SlotStore(tmp_path / "state"), ModelHost(),
                         profile=load_profile("x86-avx2"), trusted=[load_public_key(bundles["pub"])],
                         device_id=DEVICE, threads=1, hooks=rec.hooks())
        managers.append(ota)
        return ota, rec

    yield make
    for m in managers:
        m.stop()
        m.host.close()


def _publish(file_server, bundle, name=None):
    dest = file_server.root / (name or bundle.name)
    shutil.copyfile(bundle, dest)
    return file_server.url(dest.name)


def _predict(ota, x):
    return ota.host.run({"image": x})[1]["logits"]


X = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)


def test_first_boot_installs_the_seed_bundle(make_ota, bundles):
    ota, rec = make_ota()
    model = ota.boot(bundles["v1"])
    assert model is not None and model.version == "1.0.0"
    ptr = ota.slots.read()
    assert ptr.active.version == "1.0.0" and ptr.seed_sha256 == sha256(bundles["v1"])
    assert _predict(ota, X).shape == (2, 3)
    assert "ota.switch" in rec.kinds()


def test_ota_success_switches_soaks_and_keeps_previous(make_ota, bundles, file_server):
    ota, rec = make_ota(soak_s=0.3)
    old = ota.boot(bundles["v1"])
    before = _predict(ota, X)
    ota.start()
    url = _publish(file_server, bundles["v2"])
    ota.handle_desired(desired_for(DEVICE, bundles["v2"], url))
    wait_for(lambda: "installed" in rec.states and ota.state == "installed", 20, what="installed")
    assert ota.host.current.version == "2.0.0"
    assert not np.allclose(_predict(ota, X), before), "the new weights are not being served"
    assert old.session._s is None, "the replaced onnxruntime session was not closed"
    ptr = ota.slots.read()
    assert ptr.active.version == "2.0.0" and ptr.previous.version == "1.0.0" and not ptr.soaking
    assert ptr.rollout_id == "r1" and ptr.generation == 1
    kinds = rec.kinds()
    order = ["ota.accepted", "ota.download", "ota.verify", "ota.check", "ota.switch", "ota.installed"]
    assert [k for k in kinds if k in order][-6:] == order
    for s in ("downloading", "verifying", "loading", "checking", "soaking", "installed"):
        assert s in rec.states
    assert rec.reported[-1].active.version == "2.0.0" and rec.reported[-1].ota_state == "installed"
    assert rec.reported[-1].golden.passed


def test_failed_golden_check_rolls_back_with_events(make_ota, bundles, file_server):
    ota, rec = make_ota()
    ota.boot(bundles["v1"])
    ota.start()
    desired = desired_for(DEVICE, bundles["bad_golden"], _publish(file_server, bundles["bad_golden"]))
    ota.handle_desired(desired)
    wait_for(lambda: ota.state == "rolled_back", 20, what="rollback")
    assert ota.host.current.version == "1.0.0"
    assert "golden output 'logits' differs" in rec.message("ota.failed")
    assert "ota.rollback" in rec.kinds()
    rep = rec.reported[-1]
    assert rep.ota_state == "rolled_back" and "checking failed" in rep.last_error
    assert (rep.rollout_id, rep.generation) == ("r1", 1), "the fleet must see its request answered"
    assert ota.slots.read().active.version == "1.0.0"
    # The same bundle again is not retried.
    n = len(rec.events)
    ota.handle_desired(desired.replace(b'"generation": 1', b'"generation": 2'))
    wait_for(lambda: "ota.skipped" in rec.kinds()[n:], 10, what="skip")
    assert "ota.download" not in rec.kinds()[n:]


def test_untrusted_bundle_is_refused_with_the_reason(make_ota, bundles, file_server):
    ota, rec = make_ota()
    ota.boot(bundles["v1"])
    from edgekit.wire import Desired, decode

    d = decode("desired", desired_for(DEVICE, bundles["untrusted"], _publish(file_server, bundles["untrusted"])), Desired)
    ota.converge(d)
    assert "not trusted" in rec.message("ota.failed")
    assert ota.host.current.version == "1.0.0" and ota.state == "rolled_back"


def test_tampered_bundle_is_refused(make_ota, bundles, file_server, tmp_path):
    from edgekit.wire import Desired, decode

    ota, rec = make_ota()
    ota.boot(bundles["v1"])
    bad = tmp_path / "tiny-2.0.0.ekb"
    data = bytearray(bundles["v2"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    # announced sha256 = the tampered file's, so the download passes and verification must catch it
    d = decode("desired", desired_for(DEVICE, bad, _publish(file_server, bad)), Desired)
    ota.converge(d)
    msg = rec.message("ota.failed")
    assert "verifying failed" in msg and ("sha256 mismatch" in msg or "signature" in msg or "not a bundle" in msg)
    assert ota.host.current.version == "1.0.0"
    # a download that does not match the announced hash is refused before verification
    rec.events.clear()
    d2 = decode("desired", desired_for(DEVICE, bundles["v2"], _publish(file_server, bad, "swapped.ekb")), Desired)
    ota.converge(d2)
    assert "does not match the announced" in rec.message("ota.failed")  # a wrong artifact: not retried


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not json", "malformed"),
        (b'{"v": 1, "device_id": "dev-1"}', "bundle"),
        (b'{"v": 7, "device_id": "dev-1"}', "version"),
        ("other", "addressed to device 'other'"),
        ("ftp", "is not http(s)"),
        ("prefix", "not under an allowed prefix"),
        ("huge", "over this device's"),
    ],
)
def test_malformed_or_unauthorised_desired_is_rejected_and_changes_nothing(make_ota, bundles, payload, needle):
    ota, rec = make_ota(allowed_url_prefixes=["http://127.0.0.1:"], max_bundle_bytes=10 << 20)
    ota.boot(bundles["v1"])
    ptr_before = ota.slots.pointer_path.read_bytes()
    states_before = list(rec.states)
    if isinstance(payload, str):
        import json

        d = json.loads(desired_for(DEVICE, bundles["v2"], "http://127.0.0.1:1/x.ekb"))
        if payload == "other":
            d["device_id"] = "other"
        elif payload == "ftp":
            d["bundle"]["url"] = "ftp://127.0.0.1:1/x.ekb"
        elif payload == "prefix":
            d["bundle"]["url"] = "http://evil.example/x.ekb"
        else:
            d["bundle"]["size"] = 1 << 40
        payload = json.dumps(d).encode()
    ota.start()
    ota.handle_desired(payload)
    assert rec.kinds()[-1] == "desired.rejected" and needle in rec.events[-1][2]
    assert ota.slots.pointer_path.read_bytes() == ptr_before
    assert rec.states == states_before
    assert ota.host.current.version == "1.0.0"


def test_crash_loop_during_soak_rolls_back(make_ota, bundles, file_server):
    from edgekit.wire import Desired, decode

    ota, _ = make_ota(soak_s=600, max_boot_attempts=2)
    ota.boot(bundles["v1"])
    ota.converge(decode("desired", desired_for(DEVICE, bundles["v2"], _publish(file_server, bundles["v2"])), Desired))
    assert ota.host.current.version == "2.0.0" and ota.slots.read().soaking
    # The agent "crashes" and restarts three times within the soak window.
    for boot in range(1, 4):
        again, rec = make_ota(soak_s=600, max_boot_attempts=2)
        served = again.boot()
        if boot <= 2:
            assert served.version == "2.0.0" and again.slots.read().boots_in_soak == boot
    assert served.version == "1.0.0"
    assert "crash loop" in rec.message("ota.rollback")
    ptr = again.slots.read()
    assert ptr.active.version == "1.0.0" and sha256(bundles["v2"]) in ptr.failed and not ptr.soaking


def test_restart_reverifies_and_rolls_back_from_a_damaged_active_slot(make_ota, bundles, file_server):
    from edgekit.wire import Desired, decode

    ota, _ = make_ota(soak_s=0)
    ota.boot(bundles["v1"])
    ota.converge(decode("desired", desired_for(DEVICE, bundles["v2"], _publish(file_server, bundles["v2"])), Desired))
    assert ota.slots.read().active.version == "2.0.0"
    again, _ = make_ota(soak_s=0)
    assert again.boot().version == "2.0.0", "a clean restart serves the installed bundle"
    slot = again.slots.read().active.slot
    p = again.slots.bundle_path(slot)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    third, rec = make_ota(soak_s=0)
    assert third.boot().version == "1.0.0"
    assert "failed at boot" in rec.message("ota.rollback")


def test_seed_that_fails_with_nothing_to_serve_is_an_error(make_ota, bundles):
    ota, _ = make_ota()
    with pytest.raises(AgentError, match="cannot serve"):
        ota.boot(bundles["bad_golden"])


def test_failed_download_is_retried_with_backoff_not_blacklisted(make_ota, bundles, file_server):
    ota, rec = make_ota(soak_s=0, retry_min_s=0.3)
    ota.boot(bundles["v1"])
    ota.start()
    url = file_server.url("later.ekb")  # not there yet: HTTP 404
    ota.handle_desired(desired_for(DEVICE, bundles["v2"], url))
    wait_for(lambda: "ota.retry" in rec.kinds(), 10, what="a scheduled retry")
    assert "HTTP 404" in rec.message("ota.download_failed")
    assert rec.data["ota.download_failed"]["http_status"] == 404, "the fleet reads the status, not the wording"
    assert "ota.failed" not in rec.kinds(), "a passing network problem is not a failed bundle"
    assert sha256(bundles["v2"]) not in ota.slots.read().failed
    assert ota.host.current.version == "1.0.0"
    shutil.copyfile(bundles["v2"], file_server.root / "later.ekb")
    wait_for(lambda: ota.host.current.version == "2.0.0" and ota.state == "installed", 20, what="install on retry")


def test_installing_over_the_previous_slot_forgets_it_as_a_fallback(make_ota, bundles, file_server):
    from edgekit.wire import Desired, decode

    ota, _ = make_ota(soak_s=0)
    ota.boot(bundles["v1"])
    ota.converge(decode("desired", desired_for(DEVICE, bundles["v2"], _publish(file_server, bundles["v2"])), Desired))
    assert ota.slots.read().previous.version == "1.0.0"
    # v3 fails its check after overwriting slot a (where v1 was): v1 must not be offered as a fallback anymore.
    ota.converge(decode("desired", desired_for(DEVICE, bundles["bad_golden"],
                                               _publish(file_server, bundles["bad_golden"])), Desired))
    ptr = ota.slots.read()
    assert ptr.active.version == "2.0.0" and ptr.previous is None


def test_a_seed_that_failed_is_not_retried_at_every_boot(make_ota, bundles):
    ota, _ = make_ota()
    ota.boot(bundles["v1"])
    again, rec = make_ota()
    assert again.boot(bundles["bad_golden"]).version == "1.0.0"
    assert "ota.failed" in rec.kinds()
    third, rec3 = make_ota()
    assert third.boot(bundles["bad_golden"]).version == "1.0.0"
    assert "ota.skipped" in rec3.kinds() and "ota.download" not in rec3.kinds()


def test_corrupt_pointer_file_is_reported_and_the_agent_still_serves(make_ota, bundles):
    ota, _ = make_ota()
    ota.boot(bundles["v1"])
    ota.slots.pointer_path.write_text("{not json")
    again, rec = make_ota()
    assert again.boot(bundles["v1"]).version == "1.0.0"
    assert "state.corrupt" in rec.kinds()
    assert again.slots.read().active.version == "1.0.0"


def test_fleet_rollback_returns_to_the_previous_slot(make_ota, bundles, file_server):
    """The fleet undoes a wave with action=rollback: the agent leaves the bundle for its own previous slot."""
    import json

    ota, rec = make_ota(soak_s=0.2)
    ota.boot(bundles["v1"])
    before = _predict(ota, X)
    ota.start()
    url = _publish(file_server, bundles["v2"])
    ota.handle_desired(desired_for(DEVICE, bundles["v2"], url))
    wait_for(lambda: ota.state == "installed" and ota.host.current.version == "2.0.0", 20, what="v2 installed")

    rollback = json.loads(desired_for(DEVICE, bundles["v2"], url, generation=2))
    rollback["action"] = "rollback"
    ota.handle_desired(json.dumps(rollback).encode())
    wait_for(lambda: ota.host.current.version == "1.0.0", 20, what="back on v1")
    np.testing.assert_allclose(_predict(ota, X), before)
    ptr = ota.slots.read()
    assert ptr.active.version == "1.0.0" and ptr.generation == 2 and sha256(bundles["v2"]) in ptr.failed
    assert "the fleet rolled back tiny@2.0.0" in rec.message("ota.rollback")
    assert rec.reported[-1].ota_state == "rolled_back" and rec.reported[-1].active.version == "1.0.0"

    # Asked again (a re-publish) or for a bundle it no longer runs: nothing changes.
    ota.handle_desired(json.dumps(rollback | {"generation": 3}).encode())
    wait_for(lambda: ota.slots.read().generation == 3, 10, what="generation 3 answered")
    assert ota.host.current.version == "1.0.0" and rec.kinds().count("ota.rollback") == 1

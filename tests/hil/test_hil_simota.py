"""The simulated OTA state machine on its own (no broker): the agent's states, events and rules."""

from __future__ import annotations

import asyncio

from edgekit.wire import BundleRef, Desired, ModelRef, encode
from hil.simota import SimOta, Slot
from hil.simscript import SimScript


def _desired(version: str, *, device: str = "d0", gen: int = 1, sha: str | None = None, url: str | None = None) -> bytes:
    ref = BundleRef(name="m", version=version, url=url or f"http://fleet/m-{version}.ekb",
                    sha256=sha or (version.replace(".", "") * 64)[:64].ljust(64, "0"), size=100)
    return encode(Desired(device_id=device, bundle=ref, rollout_id="r", generation=gen))


def _run(script: dict, steps, *, active: ModelRef | None = None):
    events, reports = [], []
    sc = SimScript.model_validate({"ota": {"step_s": 0, "soak_s": 0.05, "retry_min_s": 0.05}} | script)

    async def main():
        ota = SimOta(device_id="d0", script=sc, event=lambda k, m, **kw: events.append(k),
                     report=lambda r: reports.append(r))
        if active is not None:
            ota.active = Slot(ref=active, sha256="f" * 64)
        for raw, wait in steps:
            ota.handle_desired(raw)
            await asyncio.sleep(wait)
        await ota.close()
        return ota

    ota = asyncio.run(main())
    return ota, events, reports


def test_happy_path_walks_every_state_and_soaks():
    ota, events, reports = _run({}, [(_desired("2.0"), 0.3)], active=ModelRef(name="m", version="1.0"))
    assert [r.ota_state for r in reports] == ["downloading", "verifying", "loading", "checking", "soaking", "installed"]
    assert events == ["ota.accepted", "ota.download", "ota.verify", "ota.check", "ota.switch", "ota.installed"]
    assert ota.active.ref == ModelRef(name="m", version="2.0") and ota.previous.ref.version == "1.0"
    assert reports[-1].generation == 1 and reports[-1].rollout_id == "r" and reports[-1].golden.passed


def test_failed_golden_without_a_model_is_failed_and_not_retried():
    ota, events, reports = _run({"defaults": {"golden": "fail"}}, [(_desired("2.0"), 0.1), (_desired("2.0", gen=2), 0.1)])
    assert ota.active is None and ota.state == "failed" and len(ota.failed) == 1
    assert events.count("ota.accepted") == 1 and events[-1] == "ota.skipped"
    assert "golden check failed" in reports[-2].last_error


def test_failed_soak_rolls_back_to_the_previous_model():
    ota, events, _ = _run({"bundles": {"m@2.0": {"soak": "fail"}}}, [(_desired("2.0"), 0.3)],
                          active=ModelRef(name="m", version="1.0"))
    assert ota.state == "rolled_back" and ota.active.ref.version == "1.0" and ota.previous is None
    assert events[-1] == "ota.rollback" and ota.failed


def test_the_running_bundle_only_updates_its_generation():
    ota, events, reports = _run({}, [(_desired("2.0"), 0.3), (_desired("2.0", gen=5), 0.05)])
    assert events.count("ota.accepted") == 1 and ota.generation == 5 and reports[-1].generation == 5


def test_bad_desired_states_are_rejected_and_change_nothing():
    bad = [b"not json", _desired("2.0", device="other"), _desired("2.0", url="ftp://x/m.ekb")]
    ota, events, reports = _run({}, [(b, 0.01) for b in bad])
    assert events == ["desired.rejected"] * 3 and reports == [] and ota.state == "idle"


def test_a_newer_desired_state_supersedes_a_pending_retry():
    ota, events, _ = _run({"bundles": {"m@2.0": {"download": "unreachable"}}},
                          [(_desired("2.0"), 0.02), (_desired("3.0", gen=2), 0.3)],
                          active=ModelRef(name="m", version="1.0"))
    assert ota.active.ref.version == "3.0" and "ota.download_failed" in events and ota.failed == []

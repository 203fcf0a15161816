"""Download tokens ride on *published* desired states, never on stored ones.

The rollout manager (real SQLite store, real registry) publishes through a recording publisher; the
tokens it puts into bundle URLs are checked with the real verifier, bound to the right device.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from edgekit import wire
from fleet.db.models import Device
from fleet.rollouts import RolloutManager, RolloutSpec
from fleet.security.download_token import DownloadTokenError, verify_download_token
from fleet.service import FleetService, download_refused
from fleet.settings import FleetSettings
from fleet.store import Message

SECRET = b"s" * 32


class PipelinedPublisher:
    """Records what ``publish_many`` was given, as the MQTT publisher's pipelined path is used."""

    def __init__(self):
        self.history: list[tuple[str, wire.Desired | None]] = []

    def publish(self, device_id, desired):  # pragma: no cover - the manager prefers publish_many
        raise AssertionError("publish_many expected")

    def publish_many(self, items):
        self.history.extend(items)
        return {d for d, _ in items}


def _token(desired: wire.Desired) -> str:
    q = parse_qs(urlsplit(desired.bundle.url).query)
    assert list(q) == ["token"], desired.bundle.url
    return q["token"][0]


def _start_rollout(manager, fleet, ids):
    for i in ids:
        fleet.add(i, tags=["line-3"])
    st = manager.create(RolloutSpec.build(bundle="tiny@2.0.0", selector="tag=line-3", waves="100", soak_s="1s"))
    manager.tick()
    return st.id


@pytest.mark.parametrize("pipelined", [False, True])
def test_published_urls_carry_a_device_bound_token_and_stored_ones_do_not(db, registry, publisher, clock, fleet,
                                                                         pipelined):
    pub = PipelinedPublisher() if pipelined else publisher
    fleet.publisher = pub
    manager = RolloutManager(db, registry, pub, clock=clock, download_secret=SECRET, download_token_ttl_s=120)
    _start_rollout(manager, fleet, ["cam-a", "cam-b"])

    sent = {d: desired for d, desired in pub.history}
    assert set(sent) == {"cam-a", "cam-b"}
    for device_id, desired in sent.items():
        claims = verify_download_token(_token(desired), SECRET, bundle="tiny", version="2.0.0", device_id=device_id,
                                       sha256=desired.bundle.sha256)
        assert claims.dev == device_id and claims.exp - claims.iat == 120
        other = "cam-b" if device_id == "cam-a" else "cam-a"
        with pytest.raises(DownloadTokenError, match="another device"):
            verify_download_token(_token(desired), SECRET, bundle="tiny", version="2.0.0", device_id=other)
        assert urlsplit(desired.bundle.url).path == "/api/v1/bundles/tiny/2.0.0/download"

    with db.session() as s:
        stored = {d.id: d.desired for d in s.scalars(select(Device))}
    for device_id in ("cam-a", "cam-b"):
        url = stored[device_id]["bundle"]["url"]
        assert "token" not in url and url == "http://fleet.test:8080/api/v1/bundles/tiny/2.0.0/download"


def test_every_republish_carries_a_fresh_token(db, registry, publisher, clock, fleet):
    manager = RolloutManager(db, registry, publisher, clock=clock, download_secret=SECRET)
    _start_rollout(manager, fleet, ["cam-a"])
    first = publisher.retained["cam-a"]
    manager.republish("cam-a")  # what a birth (or a refused download) triggers
    assert manager.flush_outbox() == 1
    second = publisher.retained["cam-a"]
    assert second.generation == first.generation  # the same desired state ...
    assert _token(second) != _token(first)  # ... with a new token
    verify_download_token(_token(second), SECRET, bundle="tiny", version="2.0.0", device_id="cam-a")


def test_without_a_secret_urls_are_published_as_stored(db, registry, publisher, clock, fleet):
    manager = RolloutManager(db, registry, publisher, clock=clock)
    _start_rollout(manager, fleet, ["cam-a"])
    assert "token" not in publisher.retained["cam-a"].bundle.url


def _event(kind: str, message: str, device_id: str = "cam-a", **data) -> Message:
    now = datetime.now(timezone.utc)
    return Message("events", device_id, wire.Event(device_id=device_id, seq=1, ts=now, kind=kind, level="warning",
                                                   message=message, data=data), now)


def test_a_refused_download_is_recognised():
    assert download_refused(_event("ota.download_failed", "downloading failed: GET http://f/x?token=… answered "
                                                          "HTTP 403: download token refused: download token expired"))
    assert not download_refused(_event("ota.download_failed", "downloading failed: GET http://f/x answered HTTP 503"))
    assert not download_refused(_event("ota.installed", "HTTP 403 mentioned in passing? no: wrong kind"))
    # the structured status decides whatever the wording
    assert download_refused(_event("ota.download_failed", "the server said no", http_status=403))
    assert not download_refused(_event("ota.download_failed", "HTTP 403 in a 503's body", http_status=503))


def test_a_refused_download_republishes_once_per_interval(db, registry, publisher, clock, fleet, tmp_path):
    """The ingest hook of the service: a 403 re-publishes the device's desired state (fresh token), but a
    device refused over and over is not answered with a publish storm."""
    manager = RolloutManager(db, registry, publisher, clock=clock, download_secret=SECRET)
    _start_rollout(manager, fleet, ["cam-a"])
    service = FleetService(FleetSettings(data_dir=tmp_path))
    service.ctx = type("Ctx", (), {"rollouts": manager})()
    refused = _event("ota.download_failed", "downloading failed: GET … answered HTTP 403: download token expired")
    before = len(publisher.history)
    service._on_messages([refused, _event("ota.download", "fetching …")])
    assert manager.flush_outbox() == 1 and len(publisher.history) == before + 1
    service._on_messages([refused])  # again at once: rate-limited
    assert manager.flush_outbox() == 0
    service._reissued["cam-a"] -= service.REISSUE_EVERY_S
    service._on_messages([refused])
    assert manager.flush_outbox() == 1

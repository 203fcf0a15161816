"""Fixtures of the zero-trust tests: a fresh fleet CA, and a real mosquitto started with the secure
configuration that :mod:`fleet.security.broker_config` generates (mTLS, CRL, per-device ACL)."""

from __future__ import annotations

import pytest
from zerotrust_helpers import MOSQUITTO, SecureMosquitto

from fleet.security.pki import FleetPKI


@pytest.fixture
def pki(tmp_path) -> FleetPKI:
    """A new fleet CA (with broker and fleet identities) in ``tmp_path/pki``."""
    return FleetPKI.init(tmp_path / "pki")


@pytest.fixture
def secure_broker(pki, tmp_path):
    """A real mosquitto with the secure config; skips (naming it) when mosquitto is not installed."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto); .ci/run installs it")
    broker = SecureMosquitto(pki, tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture
def pinned_broker(pki, tmp_path):
    """The secure broker with client ids pinned to identities on the device port + a fleet listener."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto); .ci/run installs it")
    broker = SecureMosquitto(pki, tmp_path / "broker", fleet_listener=True).start()
    yield broker
    broker.stop()

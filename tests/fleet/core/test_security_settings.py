"""The ``security`` setting: its default, the addresses it implies, and bad values as one clear error."""

from __future__ import annotations

import pytest

from edgekit.errors import ConfigError
from fleet.settings import load_settings


def test_default_is_the_insecure_trial_broker(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKIT_FLEET_SECURITY", raising=False)
    s = load_settings(data_dir=tmp_path)
    assert s.security == "insecure" and not s.secure
    assert s.broker_address == ("127.0.0.1", 1883)


def test_mtls_points_the_fleet_clients_at_the_loopback_fleet_listener(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_FLEET_BROKER_FLEET_PORT", "9884")
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("security: mtls\nbroker_tls_port: 9883\n")
    s = load_settings(cfg, data_dir=tmp_path)
    assert s.secure and s.broker_address == ("127.0.0.1", 9884) and s.pki_dir == tmp_path / "pki"
    ext = load_settings(data_dir=tmp_path, security="mtls", broker_url="mqtts://mqtt.example.net")
    assert ext.broker_address == ("mqtt.example.net", 8883)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"security": "tls-ish"}, "security"),
    ({"security": "mtls", "broker_tls_port": 8884, "broker_fleet_port": 8884}, "broker_fleet_port"),
    ({"broker_url": "mqtts://mqtt.example.net"}, "needs security: mtls"),
    ({"download_token_ttl_s": 5}, "download_token_ttl_s"),
])
def test_bad_security_settings_are_one_config_error(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(data_dir=tmp_path, **overrides)

"""AgentConfig: YAML + environment overrides; a bad config is one clear ConfigError."""

from __future__ import annotations

import pytest

from devices.agent.config import load_config
from edgekit.errors import ConfigError


def test_yaml_values_and_relative_paths(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text(
        "state_dir: state\nserver: {port: 9001}\nbatching: {enabled: true, max_batch: 16}\n"
        "mqtt: {url: 'mqtt://broker:1883', device_id: cam-1, telemetry_interval_s: 2}\n"
        "ota: {trusted_keys: [keys/a.pub], soak_s: 5}\n"
    )
    cfg = load_config(f)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.server.port == 9001
    assert cfg.batching.enabled and cfg.batching.max_batch == 16
    assert cfg.mqtt.device_id == "cam-1" and cfg.mqtt.telemetry_interval_s == 2
    assert cfg.ota.trusted_keys == [tmp_path / "keys" / "a.pub"]


def test_tls_paths_are_relative_to_the_config_file(tmp_path):
    f = tmp_path / "etc" / "agent.yaml"
    f.parent.mkdir()
    f.write_text(
        "mqtt: {url: 'mqtts://broker:8883', device_id: cam-1, ca_file: ca.crt, client_cert: tls/device.crt,"
        " client_key: /abs/device.key}\n"
        "ota: {ca_file: ca.crt, client_cert: device.crt, client_key: device.key}\n"
    )
    cfg = load_config(f)
    base = f.parent.resolve()
    assert cfg.mqtt.ca_file == base / "ca.crt"
    assert cfg.mqtt.client_cert == base / "tls" / "device.crt"
    assert str(cfg.mqtt.client_key) == "/abs/device.key"  # absolute paths are kept as given
    assert (cfg.ota.ca_file, cfg.ota.client_cert, cfg.ota.client_key) == (
        base / "ca.crt", base / "device.crt", base / "device.key")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    f = tmp_path / "agent.yaml"
    f.write_text("server: {port: 9001}\n")
    monkeypatch.setenv("EDGEKIT_AGENT_SERVER__PORT", "9002")
    monkeypatch.setenv("EDGEKIT_AGENT_BATCHING__ENABLED", "true")
    cfg = load_config(f)
    assert cfg.server.port == 9002
    assert cfg.batching.enabled is True


def test_batching_is_off_by_default():
    assert load_config(None).batching.enabled is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server: {port: 70000}\n", "server.port"),
        ("sever: {port: 1}\n", "sever"),
        ("mqtt: {url: 'http://x'}\n", "mqtt.url"),
        ("mqtt: {url: 'mqtt://x:1883'}\n", "device_id"),
        ("mqtt: {url: 'mqtt://x:1883', device_id: 'a/b'}\n", "device id"),
        ("batching: {max_batch: 0}\n", "batching.max_batch"),
        ("- just\n- a list\n", "mapping"),
        ("server: {port: [\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, needle):
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert needle in str(err.value)
    assert "\n" not in str(err.value).strip()


def test_missing_file_and_bad_env(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    monkeypatch.setenv("EDGEKIT_AGENT_SERVER__PORT", "not-a-number")
    with pytest.raises(ConfigError, match="server.port"):
        load_config(None)


def test_the_shipped_example_config_is_valid():
    from pathlib import Path

    import devices.agent

    example = Path(devices.agent.__file__).parent / "agent.example.yaml"
    cfg = load_config(example)
    assert cfg.mqtt.device_id == "cam-0001" and cfg.ota.soak_s == 60 and not cfg.batching.enabled

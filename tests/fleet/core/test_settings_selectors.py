"""Settings (env / YAML / overrides, one ConfigError) and device selectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from fleet.selectors import parse_selector
from fleet.settings import load_settings


def test_defaults_derive_from_data_dir(tmp_path):
    s = load_settings(data_dir=tmp_path)
    assert s.database == f"sqlite:///{tmp_path / 'fleet.db'}"
    assert s.artifacts == tmp_path / "artifacts"
    assert s.port == 8080 and s.broker_url == "embedded" and s.public_url == "http://127.0.0.1:8080"
    assert s.broker_address == ("127.0.0.1", 1883)
    assert s.public_downloads is False


def test_precedence_overrides_then_yaml_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_FLEET_PORT", "9001")
    monkeypatch.setenv("EDGEKIT_FLEET_SHARED_GROUP", "from-env")
    monkeypatch.setenv("EDGEKIT_FLEET_BROKER_URL", "mqtt://broker.example:1884")
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("port: 9002\ndatabase_url: postgresql+psycopg://u@db/fleet\npublic_url: https://fleet.example/\n")
    s = load_settings(cfg)
    assert s.port == 9002, "the YAML file beats the environment"
    assert s.shared_group == "from-env"
    assert s.broker_address == ("broker.example", 1884)
    assert s.database == "postgresql+psycopg://u@db/fleet"
    assert s.public_url == "https://fleet.example"
    assert load_settings(cfg, port=9003).port == 9003, "command-line overrides beat everything"


@pytest.mark.parametrize(("text", "match"), [
    ("port: 70000\n", "port"),
    ("colour: blue\n", "colour"),
    ("broker_url: http://x\n", "broker_url"),
    ("database_url: mysql://x\n", "database_url"),
    ("- a\n- b\n", "mapping"),
    ("port: [\n", "not valid YAML"),
    ("tick_interval_s: 0\n", "tick_interval_s"),
    ("shared_group: 'a/b'\n", "shared_group"),
])
def test_bad_config_is_one_config_error(tmp_path, text, match):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


@dataclass
class D:
    id: str
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    profile: str | None = None


FLEET = [
    D("a", ["line-3"], "eu", "raspberry-pi-5"),
    D("b", ["line-3", "cam"], "us", "x86-avx2"),
    D("c", ["line-4"], "eu", "raspberry-pi-5"),
    D("d", [], None, None),
]


@pytest.mark.parametrize(("text", "expected"), [
    ("all", ["a", "b", "c", "d"]),
    ("tag=line-3", ["a", "b"]),
    ("tag=line-3,profile=raspberry-pi-5", ["a"]),
    ("id=a,c", ["a", "c"]),
    ("id=a, d", ["a", "d"]),
    ("group=eu,us", ["a", "b", "c"]),
    ("group=eu,profile=x86-avx2", []),
    ("tag=line-4,cam", ["b", "c"]),
])
def test_selectors(text, expected):
    assert [d.id for d in parse_selector(text).filter(FLEET)] == expected


@pytest.mark.parametrize(("text", "match"), [
    ("", "empty selector"),
    ("colour=red", "unknown key"),
    ("line-3", "needs a key"),
    ("tag=", "has no value"),
    ("tag=a,,b", "empty item"),
])
def test_bad_selectors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_selector(text)


def test_selector_canonical_text():
    assert str(parse_selector(" profile=x86-avx2 , tag=b,a ")) == "tag=a,tag=b,profile=x86-avx2"
    assert str(parse_selector("*")) == "all"




def test_the_example_config_is_valid():
    example = Path(__file__).resolve().parents[3] / "fleet" / "fleet.example.yaml"
    s = load_settings(example)
    assert s.database.startswith("postgresql+psycopg://") and s.artifact_store == "s3://edgekit-bundles/prod"
    assert s.broker_address == ("mqtt.example.com", 1883) and s.replica_id == "fleet-a"

"""Manifest, profiles, host detection, signing keys and MQTT wire schemas."""

from __future__ import annotations

import json
import stat

import pytest
from pydantic import ValidationError

from edgekit import wire
from edgekit.detect import HostInfo, best_profile, detect_host
from edgekit.errors import ConfigError, ProfileError, WireError
from edgekit.manifest import Manifest, TensorSpec
from edgekit.profiles import load_profile, load_profiles
from edgekit.signing import generate_keypair, load_public_key, load_signing_key

BUILTIN = {"jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5", "x86-avx2", "x86-avx512-vnni"}


def test_tensor_spec_matching():
    s = TensorSpec(name="x", dtype="float32", shape=["batch", 3, 32])
    assert s.matches((7, 3, 32)) and not s.matches((7, 3, 31)) and not s.matches((3, 32))
    assert s.concrete(4) == (4, 3, 32)
    with pytest.raises(ValidationError, match="negative"):
        TensorSpec(name="x", dtype="float32", shape=[-1])
    with pytest.raises(ValidationError):
        TensorSpec(name="x", dtype="complex64", shape=[1])


def test_manifest_rejects_unknown_keys_and_bad_files():
    base = {
        "name": "m", "version": "1", "files": {"model.onnx": {"sha256": "0" * 64, "size": 1}},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
    }
    assert Manifest.model_validate(base).schema_ == 1
    with pytest.raises(ValidationError, match="Extra inputs"):
        Manifest.model_validate(base | {"surprise": 1})
    with pytest.raises(ValidationError, match="not allowed"):
        Manifest.model_validate(base | {"files": {"model.onnx": {"sha256": "0" * 64, "size": 1}, "a/b": {"sha256": "0" * 64, "size": 1}}})
    with pytest.raises(ValidationError, match="duplicate input"):
        Manifest.model_validate(base | {"inputs": base["inputs"] * 2})


def test_builtin_profiles_validate():
    profiles = load_profiles()
    assert set(profiles) >= BUILTIN
    assert profiles["x86-avx2"].quantization.activation_type == "int8", "U8S8 saturates on AVX2 w/o VNNI"
    assert profiles["jetson-orin-nano"].runtime_preference[0] == "tensorrt"


def test_unknown_and_invalid_profiles(tmp_path):
    with pytest.raises(ProfileError, match="unknown device profile 'nope'"):
        load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\narch: sparc\nruntime_preference: [onnxruntime]\nprecisions: [fp32]\nthreads: 1\nmemory_budget_mb: 64\n")
    with pytest.raises(ProfileError, match="arch"):
        load_profile(bad)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (HostInfo(arch="x86_64", cpu_model="", cpu_features=["avx2", "fma"], cores=4, memory_mb=8000), "x86-avx2"),
        (HostInfo(arch="x86_64", cpu_model="", cpu_features=["avx2", "fma", "avx512f", "avx512_vnni"], cores=4, memory_mb=8000), "x86-avx512-vnni"),
        (HostInfo(arch="aarch64", cpu_model="", cpu_features=["asimd"], cores=4, memory_mb=8000, board="Raspberry Pi 5 Model B Rev 1.0"), "raspberry-pi-5"),
        (HostInfo(arch="aarch64", cpu_model="", cpu_features=["asimd"], cores=6, memory_mb=8000, board="NVIDIA Jetson Orin Nano Developer Kit", gpu="Orin"), "jetson-orin-nano"),
        (HostInfo(arch="x86_64", cpu_model="", cpu_features=["sse4_2"], cores=4, memory_mb=8000), None),
    ],
)
def test_best_profile(host, expected):
    got = best_profile(host, load_profiles())
    assert (got[0] if got else None) == expected


def test_detect_this_host():
    info = detect_host()
    assert info.cores >= 1 and info.memory_mb > 0 and info.cpu_features
    if "avx2" in info.cpu_features and info.arch == "x86_64":
        assert info.profile in {"x86-avx2", "x86-avx512-vnni"}


def test_keys(tmp_path):
    priv, pub = generate_keypair(tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    k = load_signing_key(priv)
    assert load_public_key(pub).verify(k.sign(b"abc"), b"abc")
    assert not load_public_key(pub).verify(k.sign(b"abc"), b"abd")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(tmp_path)
    with pytest.raises(ConfigError, match="not a PEM"):
        load_public_key(priv)
    with pytest.raises(ConfigError, match="does not exist"):
        load_signing_key(tmp_path / "missing.key")


def test_wire_topics_and_payloads():
    assert wire.topic("cam-1", "telemetry") == "edgekit/v1/cam-1/telemetry"
    assert wire.parse_topic("edgekit/v1/cam-1/events") == ("cam-1", "events")
    assert wire.subscription("status", shared_group="fleet") == "$share/fleet/edgekit/v1/+/status"
    for bad in ("edgekit/v2/a/status", "edgekit/v1/a/b/status", "edgekit/v1/a/nope", "edgekit/v1/+/status"):
        with pytest.raises(WireError):
            wire.parse_topic(bad)
    with pytest.raises(WireError, match="invalid device id"):
        wire.topic("a/b", "status")
    t = wire.Telemetry(device_id="cam-1", seq=5, requests=10, latency=wire.LatencyStats(p95_ms=2.0))
    back = wire.decode("telemetry", wire.encode(t))
    assert back.seq == 5 and back.latency.p95_ms == 2.0
    with pytest.raises(WireError, match="not JSON"):
        wire.decode("telemetry", b"{nope")
    with pytest.raises(WireError, match="seq"):
        wire.decode("telemetry", b'{"device_id": "cam-1", "seq": -1}')
    with pytest.raises(WireError, match="unsupported payload version 2"):
        wire.decode("status", b'{"v": 2, "device_id": "cam-1", "state": "online"}')
    # a newer agent's extra fields are ignored by an older reader
    assert wire.decode("status", b'{"device_id": "d", "state": "online", "future": 1}').state == "online"


def test_wire_strings_are_bounded_like_the_fleet_columns():
    """An over-long value is a rejected payload on every database, not a row PostgreSQL refuses."""
    ok = {"device_id": "d", "state": "online", "agent_version": "1" * 64, "tags": ["group=" + "g" * 58]}
    assert wire.decode("status", json.dumps(ok)).agent_version == "1" * 64
    for field, value in (("agent_version", "1" * 65), ("profile", "p" * 65), ("tags", ["t" * 65])):
        with pytest.raises(WireError, match=field):
            wire.decode("status", json.dumps(ok | {field: value}))
    with pytest.raises(WireError, match="rollout_id"):
        wire.decode("events", json.dumps({"device_id": "d", "seq": 1, "kind": "x", "rollout_id": "r" * 65}))
    t = wire.decode("telemetry", b'{"device_id": "d", "seq": 1, "requests": 3, "errors": 1, "client_errors": 7}')
    assert (t.requests, t.errors, t.client_errors) == (3, 1, 7)

"""Bundle-signing key rotation with real signed bundles: old bundles stay valid until their key is retired."""

from __future__ import annotations

import pytest

from edgekit.bundle import verify_bundle
from edgekit.errors import ConfigError, UntrustedKeyError
from edgekit.signing import generate_keypair, load_signing_key
from fleet.security.keyring import BundleKeyring


def _signed_bundle(tmp_path, tiny_onnx, name: str, version: str):
    from runtimes.packaging import bundle_from_onnx

    priv, pub = generate_keypair(tmp_path / f"key-{version}")
    out = tmp_path / f"{name}-{version}.ekb"
    bundle_from_onnx(tiny_onnx, name=name, version=version, key=load_signing_key(priv), out=out)
    return out, pub


def test_old_bundle_stays_valid_until_its_key_is_retired(tmp_path, tiny_onnx):
    old_bundle, old_pub = _signed_bundle(tmp_path, tiny_onnx, "tiny", "1.0.0")
    new_bundle, new_pub = _signed_bundle(tmp_path, tiny_onnx, "tiny", "2.0.0")
    rogue_bundle, _ = _signed_bundle(tmp_path, tiny_onnx, "tiny", "6.6.6")
    ring = BundleKeyring(tmp_path / "keys")
    old_key = ring.add(old_pub)

    verify_bundle(old_bundle, ring.trusted(), tmp_path / "x1")
    with pytest.raises(UntrustedKeyError):
        verify_bundle(new_bundle, ring.trusted(), tmp_path / "x2")

    # rotation: both keys trusted at once, both generations of bundles verify
    ring.add(new_pub)
    assert len(ring.trusted()) == 2
    verify_bundle(old_bundle, ring.trusted(), tmp_path / "x3")
    verify_bundle(new_bundle, ring.trusted(), tmp_path / "x4")

    # retire the old key: its bundles are refused, the new ones still verify
    ring.retire(old_key.id)
    with pytest.raises(UntrustedKeyError, match=old_key.id):
        verify_bundle(old_bundle, ring.trusted(), tmp_path / "x5")
    verify_bundle(new_bundle, ring.trusted(), tmp_path / "x6")
    assert (ring.retired_dir / f"{old_key.id}.pub").exists()

    # a bundle signed by a key never trusted is refused throughout
    with pytest.raises(UntrustedKeyError):
        verify_bundle(rogue_bundle, ring.trusted(), tmp_path / "x7")


def test_retired_key_is_never_trusted_again(tmp_path):
    ring = BundleKeyring(tmp_path / "keys")
    _, a = generate_keypair(tmp_path / "a")
    _, b = generate_keypair(tmp_path / "b")
    ka = ring.add(a)
    ring.add(b)
    ring.retire(ka.id)
    with pytest.raises(ConfigError, match="retired"):
        ring.add(a)
    # copying the file back by hand does not resurrect it either
    (ring.trusted_dir / "sneaky.pub").write_bytes(a.read_bytes())
    assert ka.id not in {k.id for k in ring.trusted()}


def test_retire_refuses_unknown_ids_and_the_last_key(tmp_path):
    ring = BundleKeyring(tmp_path / "keys")
    _, a = generate_keypair(tmp_path / "a")
    ka = ring.add(a)
    with pytest.raises(ConfigError, match="no trusted key with id"):
        ring.retire("0000000000000000")
    with pytest.raises(ConfigError, match="last trusted key"):
        ring.retire(ka.id)
    assert [k.id for k in ring.trusted()] == [ka.id]


def test_trusted_folder_is_what_the_core_loader_reads(tmp_path):
    from edgekit.signing import load_public_keys

    ring = BundleKeyring(tmp_path / "keys")
    _, a = generate_keypair(tmp_path / "a")
    ka = ring.add(a)
    assert [k.id for k in load_public_keys([ring.trusted_dir])] == [ka.id]

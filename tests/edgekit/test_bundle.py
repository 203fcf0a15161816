"""Bundle verification: every tamper case is refused with its own message, nothing escapes the folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import BundleLimits, GoldenSet, create_bundle, read_manifest, verify_bundle
from edgekit.errors import BundleError, BundleVerificationError, UntrustedKeyError
from edgekit.manifest import canonical_json
from edgekit.signing import generate_keypair, load_public_key

SPEC = {
    "name": "m",
    "version": "1.0",
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
}


@pytest.fixture
def made(tmp_path, signing_keys):
    key, pub, _ = signing_keys
    golden = GoldenSet(inputs={"x": np.ones((2, 2), np.float32)}, outputs={"y": np.zeros((2, 2), np.float32)})
    path = tmp_path / "m-1.0.ekb"
    create_bundle(path, SPEC, {"model.onnx": b"not really onnx but bytes", "golden.npz": golden.to_npz_bytes()}, key)
    return path, key, pub


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t}


def rewrite(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> None:
    with tarfile.open(path, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for info in extra or []:
            t.addfile(info)


def verify(path, pub, dest):
    return verify_bundle(path, [pub], dest)


def test_roundtrip_verifies_and_extracts(made, tmp_path):
    path, key, pub = made
    vb = verify(path, pub, tmp_path / "out")
    assert vb.key_id == key.id
    assert vb.model_path.read_bytes() == b"not really onnx but bytes"
    assert vb.golden().inputs["x"].shape == (2, 2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["golden.npz", "manifest.json", "model.onnx"]
    m = read_manifest(path)
    assert m.files["model.onnx"].size == 25 and m.ref == "m@1.0"


@pytest.mark.parametrize("target", ["model.onnx", "golden.npz"])
def test_flipped_byte_in_any_file(made, tmp_path, target):
    path, _, pub = made
    files = members(path)
    data = bytearray(files[target])
    data[len(data) // 2] ^= 0x01
    files[target] = bytes(data)
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match=f"{target}: sha256 mismatch"):
        verify(path, pub, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir()), "a failed verification leaves nothing behind"


def test_missing_file(made, tmp_path):
    path, _, pub = made
    files = members(path)
    del files["golden.npz"]
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match="missing: golden.npz"):
        verify(path, pub, tmp_path / "out")


def test_added_file(made, tmp_path):
    path, _, pub = made
    files = members(path) | {"evil.sh": b"#!/bin/sh\n"}
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match="not listed in the manifest were added: evil.sh"):
        verify(path, pub, tmp_path / "out")


def test_manifest_edited_after_signing(made, tmp_path):
    path, _, pub = made
    files = members(path)
    manifest = json.loads(files["manifest.json"])
    manifest["version"] = "9.9"
    files["manifest.json"] = canonical_json(manifest)
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match="signature does not match"):
        verify(path, pub, tmp_path / "out")


def test_wrong_key(made, tmp_path):
    path, _, _ = made
    _, other = generate_keypair(tmp_path / "other")
    with pytest.raises(UntrustedKeyError, match="not trusted"):
        verify(path, load_public_key(other), tmp_path / "out")


def test_forged_key_id_still_fails_signature(made, tmp_path):
    path, _, pub = made
    _, other_pub = generate_keypair(tmp_path / "other")
    other = load_public_key(other_pub)
    files = members(path)
    sig = json.loads(files["signature"])
    sig["key_id"] = other.id  # claim to be signed by the other trusted key
    files["signature"] = json.dumps(sig).encode()
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match="signature does not match"):
        verify_bundle(path, [pub, other], tmp_path / "out")


def test_no_trusted_key_refused(made, tmp_path):
    path, _, _ = made
    with pytest.raises(UntrustedKeyError, match="no trusted public key"):
        verify_bundle(path, [], tmp_path / "out")


def test_unknown_schema_version(made, tmp_path):
    """A correctly signed manifest of a future schema is refused for its schema, not its signature."""
    path, key, pub = made
    files = members(path)
    manifest = json.loads(files["manifest.json"])
    manifest["schema"] = 2
    raw = canonical_json(manifest)
    import base64

    files["manifest.json"] = raw
    files["signature"] = json.dumps(
        {"alg": "ed25519", "key_id": key.id, "sig": base64.b64encode(key.sign(raw)).decode()}
    ).encode()
    rewrite(path, files)
    with pytest.raises(BundleVerificationError, match="unsupported manifest schema 2"):
        verify(path, pub, tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "message"),
    [("/etc/evil", "absolute path"), ("../evil", r"contains '\.\.'"), ("sub/../../evil", r"contains '\.\.'")],
)
def test_path_traversal_members(made, tmp_path, name, message):
    path, _, pub = made
    files = members(path) | {name: b"x"}
    rewrite(path, files)
    dest = tmp_path / "deep" / "out"
    with pytest.raises(BundleVerificationError, match=message):
        verify(path, pub, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_pointing_outside(made, tmp_path, kind):
    path, _, pub = made
    link = tarfile.TarInfo("model2.onnx")
    link.type = kind
    link.linkname = "../../../etc/passwd"
    rewrite(path, members(path), extra=[link])
    with pytest.raises(BundleVerificationError, match="link pointing outside"):
        verify(path, pub, tmp_path / "out")
    assert not (tmp_path / "out" / "model2.onnx").exists()


def test_declared_sizes_over_limit(made, tmp_path):
    path, _, pub = made
    with pytest.raises(BundleVerificationError, match="declares more than 100 bytes"):
        verify_bundle(path, [pub], tmp_path / "out", limits=BundleLimits(max_total_bytes=100))


def test_not_a_tar(tmp_path, signing_keys):
    _, pub, _ = signing_keys
    bad = tmp_path / "bad.ekb"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BundleVerificationError, match="not a bundle"):
        verify_bundle(bad, [pub], tmp_path / "out")


def test_refuses_non_empty_destination(made, tmp_path):
    path, _, pub = made
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "model.onnx").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="not empty"):
        verify(path, pub, dest)


def test_create_rejects_bad_manifest(tmp_path, signing_keys):
    key, _, _ = signing_keys
    with pytest.raises(BundleError, match="name"):
        create_bundle(tmp_path / "x.ekb", SPEC | {"name": "../evil"}, {"model.onnx": b"x"}, key)
    with pytest.raises(BundleError, match="must carry model.onnx"):
        create_bundle(tmp_path / "x.ekb", SPEC, {"weights.bin": b"x"}, key)
    assert not list(tmp_path.glob("*.ekb")) and not list(tmp_path.glob(".*tmp"))

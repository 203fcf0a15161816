"""The bundle registry: verified uploads only, content-addressed store, immutable versions."""

from __future__ import annotations

import io

import pytest

from edgekit.errors import BundleError, BundleVerificationError, FleetError, UntrustedKeyError
from edgekit.signing import generate_keypair, load_public_key
from fleet.registry import BundleConflictError, BundleNotFoundError, BundleRegistry, parse_bundle_ref


@pytest.fixture
def empty_registry(db, tmp_path, signing_keys):
    _, pub, _ = signing_keys
    return BundleRegistry(db, tmp_path / "store", [pub], "http://fleet.test:8080/")


def test_upload_list_inspect_and_serve(empty_registry, bundles):
    reg = empty_registry
    info = reg.upload(bundles["1.0.0"])
    assert (info.name, info.version, info.ref) == ("tiny", "1.0.0", "tiny@1.0.0")
    assert info.size == bundles["1.0.0"].stat().st_size and len(info.sha256) == 64
    assert info.manifest["name"] == "tiny" and info.key_id
    stored = reg.file_path("tiny", "1.0.0")
    assert stored.read_bytes() == bundles["1.0.0"].read_bytes()
    assert stored.name == f"{info.sha256}.ekb"
    assert reg.upload(bundles["1.0.0"]) == info, "re-uploading the same bytes is a no-op"
    with open(bundles["2.0.0"], "rb") as fh:
        reg.upload_stream(io.BytesIO(fh.read()))
    assert [b.version for b in reg.list()] == ["2.0.0", "1.0.0"]
    assert [b.version for b in reg.list("other")] == []
    ref = reg.bundle_ref("tiny", "2.0.0")
    assert ref.url == "http://fleet.test:8080/api/v1/bundles/tiny/2.0.0/download"
    assert ref.sha256 == reg.get("tiny", "2.0.0").sha256
    assert not list((reg.store).glob(".incoming-*")), "spooled uploads are cleaned up"


def test_refuses_untrusted_tampered_and_conflicting(empty_registry, bundles, tmp_path, tiny_onnx):
    from runtimes.packaging import bundle_from_onnx

    reg = empty_registry
    other_priv, _ = generate_keypair(tmp_path / "other")
    from edgekit.signing import load_signing_key

    rogue = tmp_path / "rogue.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="6.6.6", key=load_signing_key(other_priv), out=rogue)
    with pytest.raises(UntrustedKeyError, match="not trusted"):
        reg.upload(rogue)
    raw = bytearray(bundles["2.0.0"].read_bytes())
    raw[bytes(raw).index(b"model.onnx\x00") + 512 + 40] ^= 0xFF
    tampered = tmp_path / "tampered.ekb"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(BundleVerificationError, match="sha256"):
        reg.upload(tampered)
    assert reg.list() == [], "nothing refused was registered"
    assert not [p for p in reg.store.rglob("*.ekb")], "nor stored"

    reg.upload(bundles["1.0.0"])
    key = load_signing_key(generate_keypair(tmp_path / "k2")[0])
    reg.trusted_keys.append(load_public_key(tmp_path / "k2" / "signing.pub"))
    same_version = tmp_path / "tiny-1.0.0-rebuilt.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="1.0.0", key=key, out=same_version, golden_count=3)
    with pytest.raises(BundleConflictError, match="immutable"):
        reg.upload(same_version)
    with pytest.raises(BundleNotFoundError, match="no bundle tiny@9"):
        reg.get("tiny", "9")
    with pytest.raises(BundleError, match="does not exist"):
        reg.upload(tmp_path / "missing.ekb")


@pytest.mark.parametrize("text", ["tiny", "@1", "tiny@", "a@b@c", ""])
def test_parse_bundle_ref_refuses(text):
    with pytest.raises(FleetError, match="NAME@VERSION"):
        parse_bundle_ref(text)


def test_object_store_is_shared_by_replicas(db, tmp_path, signing_keys, bundles):
    """Two replicas with their own local caches share one object store (``file://`` stands in for s3://)."""
    pytest.importorskip("pyarrow", reason="pyarrow (object-store access) is not installed")
    from fleet.artifacts import ArtifactStore

    _, pub, _ = signing_keys
    remote = f"file://{tmp_path / 'bucket' / 'bundles'}"
    a = BundleRegistry(db, tmp_path / "cache-a", [pub], "http://a", artifacts=ArtifactStore(tmp_path / "cache-a", remote))
    b = BundleRegistry(db, tmp_path / "cache-b", [pub], "http://b", artifacts=ArtifactStore(tmp_path / "cache-b", remote))
    info = a.upload(bundles["2.0.0"])
    assert (tmp_path / "bucket" / "bundles" / info.path).read_bytes() == bundles["2.0.0"].read_bytes()
    assert not (tmp_path / "cache-b" / info.path).exists()
    served = b.file_path("tiny", "2.0.0")  # replica B fetches it on first use
    assert served == tmp_path / "cache-b" / info.path and served.read_bytes() == bundles["2.0.0"].read_bytes()
    (tmp_path / "bucket" / "bundles" / info.path).unlink()
    assert b.file_path("tiny", "2.0.0") == served, "the local cache serves without the store"
    (tmp_path / "cache-a" / info.path).unlink()
    with pytest.raises(BundleNotFoundError, match="missing from the artifact store"):
        a.file_path("tiny", "2.0.0")


def test_bad_object_store_uri_is_a_config_error(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow (object-store access) is not installed")
    from edgekit.errors import ConfigError
    from fleet.artifacts import ArtifactStore

    with pytest.raises(ConfigError, match="artifact_store"):
        ArtifactStore(tmp_path, "nosuchscheme://x/y")

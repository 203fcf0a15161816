"""Bundle upload (verified before it is accepted), listing, inspection and Range downloads."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

#: run on SQLite and on the real PostgreSQL server (skipped, naming what is missing, without one)
BOTH_DATABASES = pytest.mark.parametrize(
    "fleet_db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)], indirect=True)



def upload(client, headers, path_or_bytes, name="b.ekb"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return client.post("/api/v1/bundles", files={"file": (name, data, "application/octet-stream")}, headers=headers)


def tamper(src: bytes, member: str, fn) -> bytes:
    """Rewrite one member of a bundle tar (keeping everything else byte for byte)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(src)) as tin, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name == member:
                data = fn(data)
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return out.getvalue()


@BOTH_DATABASES
def test_good_bundle_accepted_listed_inspected(client, admin_h, read_h, tiny_bundle):
    r = upload(client, admin_h, tiny_bundle, "tiny-1.0.0.ekb")
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["ref"] == "tiny@1.0.0"
    assert b["sha256"] == hashlib.sha256(tiny_bundle.read_bytes()).hexdigest()
    assert b["download_url"].endswith("/api/v1/bundles/tiny/1.0.0/download")
    listed = client.get("/api/v1/bundles", headers=read_h).json()
    assert [x["ref"] for x in listed] == ["tiny@1.0.0"] and listed[0]["manifest"] is None
    detail = client.get("/api/v1/bundles/tiny/1.0.0", headers=read_h).json()
    assert detail["manifest"]["name"] == "tiny" and "model.onnx" in detail["manifest"]["files"]
    assert detail["key_id"]
    audit = client.get("/api/v1/audit", headers=read_h).json()["entries"]
    assert audit[0]["action"] == "bundle.upload" and audit[0]["target"] == "bundle:tiny@1.0.0"
    assert audit[0]["actor"].startswith("token:test-admin")
    # identical re-upload is idempotent
    assert upload(client, admin_h, tiny_bundle).status_code == 201
    assert len(client.get("/api/v1/bundles", headers=read_h).json()) == 1


def test_tampered_bundle_refused_with_reason(client, admin_h, read_h, tiny_bundle):
    bad = tamper(tiny_bundle.read_bytes(), "model.onnx", lambda d: d[:-1] + bytes([d[-1] ^ 0xFF]))
    r = upload(client, admin_h, bad)
    assert r.status_code == 422, r.text
    assert "model.onnx: sha256 mismatch" in r.json()["detail"]
    assert r.json()["error"] == "BundleVerificationError"
    assert client.get("/api/v1/bundles", headers=read_h).json() == []
    entry = client.get("/api/v1/audit", headers=read_h).json()["entries"][0]
    assert entry["action"] == "bundle.upload.refused" and "sha256 mismatch" in entry["details"]["reason"]


def test_edited_manifest_refused(client, admin_h, tiny_bundle):
    bad = tamper(tiny_bundle.read_bytes(), "manifest.json", lambda d: d.replace(b'"tiny"', b'"tinz"'))
    r = upload(client, admin_h, bad)
    assert r.status_code == 422 and "signature does not match" in r.json()["detail"]


def test_untrusted_bundle_refused(client, admin_h, tmp_path, tiny_onnx):
    from edgekit.signing import generate_keypair, load_signing_key
    from runtimes.packaging import bundle_from_onnx

    priv, _ = generate_keypair(tmp_path / "other-key")
    out = tmp_path / "evil-1.0.0.ekb"
    bundle_from_onnx(tiny_onnx, name="evil", version="1.0.0", key=load_signing_key(priv), out=out)
    r = upload(client, admin_h, out)
    assert r.status_code == 422
    assert "not trusted" in r.json()["detail"] and r.json()["error"] == "UntrustedKeyError"


@pytest.mark.parametrize("payload", [b"", b"not a tar at all", b"\x00" * 1024])
def test_garbage_upload_is_4xx(client, admin_h, payload):
    r = upload(client, admin_h, payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_upload_without_file_field_is_422(client, admin_h):
    r = client.post("/api/v1/bundles", data={"x": "y"}, headers=admin_h)
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post("/api/v1/bundles", data={"file": "not a file"}, headers=admin_h)
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post("/api/v1/bundles", content=b"raw bytes", headers={**admin_h, "content-type": "application/octet-stream"})
    assert r.status_code == 422


def test_version_conflict_is_409(client, admin_h, tiny_bundle, tmp_path, tiny_onnx, signing_keys):
    from runtimes.packaging import bundle_from_onnx

    assert upload(client, admin_h, tiny_bundle).status_code == 201
    other = tmp_path / "tiny-1.0.0-other.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="1.0.0", key=signing_keys[0], out=other, golden_count=3)
    r = upload(client, admin_h, other)
    assert r.status_code == 409 and "immutable" in r.json()["detail"]


@BOTH_DATABASES
def test_range_download(client, admin_h, read_h, tiny_bundle):
    upload(client, admin_h, tiny_bundle)
    blob = tiny_bundle.read_bytes()
    url = "/api/v1/bundles/tiny/1.0.0/download"
    full = client.get(url, headers=read_h)
    assert full.status_code == 200 and full.content == blob
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["etag"] == f'"{hashlib.sha256(blob).hexdigest()}"'

    part = client.get(url, headers={**read_h, "Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.content == blob[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(blob)}"

    # resume from an offset to the end, as an interrupted device download does
    tail = client.get(url, headers={**read_h, "Range": f"bytes={len(blob) - 10}-"})
    assert tail.status_code == 206 and tail.content == blob[-10:]

    beyond = client.get(url, headers={**read_h, "Range": f"bytes={len(blob) + 5}-"})
    assert beyond.status_code == 416

    head = client.head(url, headers=read_h)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(blob)

    missing = client.get("/api/v1/bundles/tiny/9.9.9/download", headers=read_h)
    assert missing.status_code == 404 and "no bundle tiny@9.9.9" in missing.json()["detail"]


def test_public_downloads_option(fleet_ctx, tiny_bundle):
    from fastapi.testclient import TestClient

    from fleet.api import create_app

    fleet_ctx.registry.upload(tiny_bundle)
    with TestClient(create_app(fleet_ctx, public_downloads=True)) as c:
        assert c.get("/api/v1/bundles/tiny/1.0.0/download").content == tiny_bundle.read_bytes()
        assert c.get("/api/v1/bundles").status_code == 401  # only the download is open

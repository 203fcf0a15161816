"""Bundle downloads with a device's download token (``?token=``) instead of an API token."""

from __future__ import annotations

import hashlib
import time

import pytest
from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.security.download_token import issue_download_token, load_or_create_secret, tokenized_url

URL = "/api/v1/bundles/tiny/1.0.0/download"


@pytest.fixture
def secret(fleet_ctx, tiny_bundle) -> bytes:
    fleet_ctx.registry.upload(tiny_bundle)
    return load_or_create_secret(fleet_ctx.settings.data_dir / "pki" / "download-token.key")


def _token(secret: bytes, **kw) -> str:
    args = {"device_id": "cam-1", "bundle": "tiny", "version": "1.0.0", **kw}
    return issue_download_token(secret, **args)


def test_valid_token_downloads_without_an_api_token_and_range_works(client, secret, tiny_bundle):
    blob = tiny_bundle.read_bytes()
    tok = _token(secret, sha256=hashlib.sha256(blob).hexdigest())
    assert client.get(URL).status_code == 401  # no token of any kind: still refused
    full = client.get(URL, params={"token": tok})
    assert full.status_code == 200 and full.content == blob
    part = client.get(URL, params={"token": tok}, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == blob[100:200]
    assert client.head(URL, params={"token": tok}).status_code == 200
    # the device may say who it is; its own token is then accepted
    assert client.get(URL, params={"token": tok}, headers={"X-Edgekit-Device": "cam-1"}).status_code == 200


def test_tokenized_url_from_the_registry_url_is_accepted(client, fleet_ctx, secret, tiny_bundle):
    info = fleet_ctx.registry.get("tiny", "1.0.0")
    url = tokenized_url(fleet_ctx.registry.download_url("tiny", "1.0.0"), secret, device_id="cam-9",
                        bundle="tiny", version="1.0.0", sha256=info.sha256, ttl_s=60)
    path = url.split("://", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)
    assert r.status_code == 200 and r.content == tiny_bundle.read_bytes()


@pytest.mark.parametrize(("kind", "reason"), [
    ("expired", "expired"),
    ("other_bundle", "is for tiny@2.0.0, not tiny@1.0.0"),
    ("other_bytes", "sha256 mismatch"),
    ("forged", "does not verify"),
    ("other_fleet", "does not verify"),
    ("garbage", "malformed"),
    ("other_device", "another device"),
])
def test_bad_tokens_are_403_with_the_reason(client, secret, kind, reason):
    headers = {}
    if kind == "expired":
        tok = _token(secret, ttl_s=60, now=time.time() - 120)
    elif kind == "other_bundle":
        tok = _token(secret, version="2.0.0")
    elif kind == "other_bytes":
        tok = _token(secret, sha256="0" * 64)
    elif kind == "forged":  # claims rewritten by the holder: the MAC no longer matches
        good = _token(secret)
        head, _body, mac = good.split(".")
        tok = ".".join([head, _token(secret, device_id="cam-2").split(".")[1], mac])
    elif kind == "other_fleet":
        tok = _token(b"x" * 32)
    elif kind == "garbage":
        tok = "not-a-token"
    else:  # a token of cam-2 presented by cam-1
        tok = _token(secret, device_id="cam-2")
        headers = {"X-Edgekit-Device": "cam-1"}
    r = client.get(URL, params={"token": tok}, headers=headers)
    assert r.status_code == 403, r.text
    assert reason in r.json()["detail"]


def test_a_bad_token_is_403_even_with_a_valid_api_token_or_public_downloads(client, fleet_ctx, secret, read_h):
    bad = _token(secret, ttl_s=1, now=time.time() - 10)
    assert client.get(URL, params={"token": bad}, headers=read_h).status_code == 403
    assert client.get(URL, headers=read_h).status_code == 200  # the API token alone still works
    with TestClient(create_app(fleet_ctx, public_downloads=True)) as c:
        assert c.get(URL, params={"token": bad}).status_code == 403


def test_two_tokens_and_unknown_bundles(client, secret):
    tok = _token(secret)
    r = client.get(f"{URL}?token={tok}&token={tok}")
    assert r.status_code == 403 and "more than one" in r.json()["detail"]
    # a valid token does not open another bundle, existing or not
    assert client.get("/api/v1/bundles/tiny/9.9.9/download", params={"token": tok}).status_code == 403
    nine = _token(secret, version="9.9.9")
    missing = client.get("/api/v1/bundles/tiny/9.9.9/download", params={"token": nine})
    assert missing.status_code == 404


def test_unreadable_secret_is_503_not_a_traceback(fleet_ctx, tiny_bundle):
    fleet_ctx.registry.upload(tiny_bundle)
    key = fleet_ctx.settings.data_dir / "pki" / "download-token.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(b"short")
    with TestClient(create_app(fleet_ctx)) as c:
        r = c.get(URL, params={"token": "ekdt1.a.b"})
    assert r.status_code == 503 and "shorter than 32 bytes" in r.json()["detail"]


def test_a_token_issued_before_its_device_was_revoked_is_refused_at_once(client, fleet_ctx, secret, tiny_bundle):
    from fleet.security.pki import FleetPKI

    pki = FleetPKI.init(fleet_ctx.settings.data_dir / "pki")
    pki.issue_device("cam-1")
    pki.issue_device("cam-2")
    tok, other = _token(secret), _token(secret, device_id="cam-2")
    assert client.get(URL, params={"token": tok}).status_code == 200
    pki.revoke("cam-1")
    r = client.get(URL, params={"token": tok})
    assert r.status_code == 403 and "'cam-1' was revoked" in r.json()["detail"]
    assert client.get(URL, params={"token": other}).status_code == 200  # nobody else is affected
    pki.reinstate("cam-1")
    assert client.get(URL, params={"token": tok}).status_code == 200
    # a deny-list that cannot be read fails closed, with the reason
    (pki.root / "index.json").write_text("{broken")
    r = client.get(URL, params={"token": other})
    assert r.status_code == 503 and "deny-list" in r.json()["detail"]

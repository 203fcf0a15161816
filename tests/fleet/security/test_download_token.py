"""Short-lived bundle download tokens: bound to device, bundle@version and expiry; forgeries refused."""

from __future__ import annotations

import stat

import pytest

from edgekit.errors import ConfigError
from fleet.security.download_token import (
    DownloadTokenError,
    issue_download_token,
    load_or_create_secret,
    verify_download_token,
)

SECRET = b"s" * 32
T0 = 1_800_000_000


def _token(**kw) -> str:
    args = {"device_id": "cam-1", "bundle": "resnet", "version": "1.2.0", "ttl_s": 600, "now": T0} | kw
    return issue_download_token(SECRET, **args)


def test_valid_token_grants_its_device_its_bundle():
    claims = verify_download_token(_token(), SECRET, bundle="resnet", version="1.2.0", device_id="cam-1", now=T0 + 10)
    assert (claims.dev, claims.bundle, claims.version, claims.exp) == ("cam-1", "resnet", "1.2.0", T0 + 600)
    # without a known requester identity (no mTLS on the route) the claims still name the device
    assert verify_download_token(_token(), SECRET, bundle="resnet", version="1.2.0", now=T0).dev == "cam-1"


def test_expired_token_is_refused():
    with pytest.raises(DownloadTokenError, match="expired"):
        verify_download_token(_token(), SECRET, bundle="resnet", version="1.2.0", now=T0 + 600)


def test_token_of_another_device_is_refused():
    with pytest.raises(DownloadTokenError, match="another device"):
        verify_download_token(_token(), SECRET, bundle="resnet", version="1.2.0", device_id="cam-2", now=T0)


@pytest.mark.parametrize(("bundle", "version"), [("restricted-model", "1.2.0"), ("resnet", "1.3.0")])
def test_token_for_another_bundle_or_version_is_refused(bundle, version):
    with pytest.raises(DownloadTokenError, match="is for resnet@1.2.0"):
        verify_download_token(_token(), SECRET, bundle=bundle, version=version, device_id="cam-1", now=T0)


def test_sha256_binding():
    h = "ab" * 32
    t = _token(sha256=h)
    verify_download_token(t, SECRET, bundle="resnet", version="1.2.0", sha256=h, now=T0)
    with pytest.raises(DownloadTokenError, match="sha256"):
        verify_download_token(t, SECRET, bundle="resnet", version="1.2.0", sha256="cd" * 32, now=T0)


def test_tampered_forged_and_malformed_tokens_are_refused():
    good = _token()
    prefix, body, mac = good.split(".")
    # swap in claims for another bundle but keep the MAC: the MAC no longer verifies
    other_body = _token(bundle="restricted-model").split(".")[1]
    cases = [
        f"{prefix}.{other_body}.{mac}",
        issue_download_token(b"x" * 32, device_id="cam-1", bundle="resnet", version="1.2.0", now=T0),
        f"{prefix}.{body}.{mac[:-2]}",
        "",
        "ekdt1.only-two",
        "jwt.header.payload",
        f"{prefix}.{body}.!!notbase64!!",
        "x" * 5000,
    ]
    for token in cases:
        with pytest.raises(DownloadTokenError):
            verify_download_token(token, SECRET, bundle="resnet", version="1.2.0", now=T0)


@pytest.mark.parametrize(
    "kw",
    [{"device_id": "a/b"}, {"bundle": "../etc"}, {"version": "1 0"}, {"ttl_s": 0}, {"ttl_s": 10**9},
     {"sha256": "nothex"}],
)
def test_issuing_with_bad_input_is_a_config_error(kw):
    with pytest.raises(ConfigError):
        _token(**kw)


def test_short_secret_is_refused():
    with pytest.raises(ConfigError, match="32 bytes"):
        issue_download_token(b"short", device_id="cam-1", bundle="b", version="1")


def test_secret_file_is_created_0600_reused_and_checked(tmp_path):
    path = tmp_path / "pki" / "download-token.key"
    s1 = load_or_create_secret(path)
    assert len(s1) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == s1
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_secret(path)
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter"):
        load_or_create_secret(path)


def _desired(url: str = "http://fleet.lan:8080/api/v1/bundles/resnet/1.2.0/download"):
    from edgekit.wire import BundleRef, Desired

    ref = BundleRef(name="resnet", version="1.2.0", url=url, sha256="a" * 64, size=10)
    return Desired(device_id="cam-1", bundle=ref, rollout_id="r1", generation=3)


def test_tokenized_url_appends_a_token_for_the_device_and_replaces_an_old_one():
    from urllib.parse import parse_qs, urlsplit

    from fleet.security.download_token import tokenized_url

    base = "http://fleet.lan:8080/api/v1/bundles/resnet/1.2.0/download"
    url = tokenized_url(base, SECRET, device_id="cam-1", bundle="resnet", version="1.2.0", sha256="a" * 64,
                        ttl_s=60, now=T0)
    assert url.startswith(base + "?token=ekdt1.")
    (tok,) = parse_qs(urlsplit(url).query)["token"]
    claims = verify_download_token(tok, SECRET, bundle="resnet", version="1.2.0", device_id="cam-1",
                                   sha256="a" * 64, now=T0 + 59)
    assert claims.exp == T0 + 60
    again = tokenized_url(url + "&x=1", SECRET, device_id="cam-1", bundle="resnet", version="1.2.0", now=T0)
    q = parse_qs(urlsplit(again).query)
    assert len(q["token"]) == 1 and q["token"][0] != tok and q["x"] == ["1"]
    with pytest.raises(ConfigError, match="http"):
        tokenized_url("ftp://x/y", SECRET, device_id="cam-1", bundle="resnet", version="1.2.0")
    with pytest.raises(ConfigError, match="device id"):
        tokenized_url(base, SECRET, device_id="a/b", bundle="resnet", version="1.2.0")


def test_tokenized_desired_binds_the_token_to_the_desired_bundle():
    from urllib.parse import parse_qs, urlsplit

    from fleet.security.download_token import tokenized_desired

    d = _desired()
    t = tokenized_desired(d, SECRET, ttl_s=120, now=T0)
    assert d.bundle.url.endswith("/download")  # the input is not modified
    assert (t.device_id, t.generation, t.bundle.sha256) == ("cam-1", 3, "a" * 64)
    (tok,) = parse_qs(urlsplit(t.bundle.url).query)["token"]
    with pytest.raises(DownloadTokenError, match="sha256"):
        verify_download_token(tok, SECRET, bundle="resnet", version="1.2.0", sha256="b" * 64, now=T0)
    with pytest.raises(DownloadTokenError, match="another device"):
        verify_download_token(tok, SECRET, bundle="resnet", version="1.2.0", device_id="cam-2", now=T0)
    assert verify_download_token(tok, SECRET, bundle="resnet", version="1.2.0", now=T0 + 119).dev == "cam-1"

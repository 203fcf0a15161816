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

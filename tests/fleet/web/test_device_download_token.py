"""The agent's real downloader against the real fleet app under uvicorn, authenticated by a download
token in the URL (what a rollout puts into a device's desired state) and the provisioned device header."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import yaml
from servers import free_port

from devices.agent.download import Downloader, DownloadError
from fleet.security.download_token import load_or_create_secret, tokenized_url
from fleet.security.pki import FleetPKI
from fleet.security.provision import provision

pytestmark = pytest.mark.integration


@pytest.fixture
def served(fleet_ctx):
    import uvicorn

    from fleet.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(fleet_ctx), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(10)


@pytest.fixture
def device_headers(tmp_path, signing_keys, served):
    """The download headers of a provisioned device's agent.yaml (device id cam-1)."""
    pub = tmp_path / "k.pub"
    pub.write_bytes(signing_keys[1].pem())
    r = provision(FleetPKI.init(tmp_path / "pki"), "cam-1", out_dir=tmp_path / "dev",
                  broker_url="mqtts://127.0.0.1:8883", fleet_url=served, trusted_keys=[pub])
    return yaml.safe_load(r.config.read_text())["ota"]["headers"]


def test_device_downloads_with_its_token_and_no_api_token(served, fleet_ctx, tiny_bundle, device_headers, tmp_path):
    info = fleet_ctx.registry.upload(tiny_bundle)
    secret = load_or_create_secret(fleet_ctx.settings.data_dir / "pki" / "download-token.key")
    base = f"{served}/api/v1/bundles/tiny/1.0.0/download"
    dl = Downloader(headers=device_headers)
    assert device_headers == {"X-Edgekit-Device": "cam-1"}

    url = tokenized_url(base, secret, device_id="cam-1", bundle="tiny", version="1.0.0", sha256=info.sha256)
    out = dl.fetch(url, tmp_path / "b.ekb", sha256=info.sha256, size=info.size)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == info.sha256

    # another device's token, though valid, is refused for this device; the reason reaches the agent,
    # the token itself is not written into the error (it would end up in the device's events)
    other = tokenized_url(base, secret, device_id="cam-2", bundle="tiny", version="1.0.0", sha256=info.sha256)
    with pytest.raises(DownloadError, match="HTTP 403: download token refused: .*another device") as err:
        dl.fetch(other, tmp_path / "c.ekb", sha256=info.sha256, size=info.size)
    token = other.split("token=", 1)[1]
    assert token not in str(err.value) and "token=…" in str(err.value)
    assert err.value.transient  # the fleet re-issues a token with the next desired state: retry later

    expired = tokenized_url(base, secret, device_id="cam-1", bundle="tiny", version="1.0.0", ttl_s=1,
                            now=time.time() - 5)
    with pytest.raises(DownloadError, match="expired"):
        dl.fetch(expired, tmp_path / "d.ekb", sha256=info.sha256, size=info.size)
    with pytest.raises(DownloadError, match="HTTP 401"):  # no token at all: the API token is required
        dl.fetch(base, tmp_path / "e.ekb", sha256=info.sha256, size=info.size)
    assert not list(tmp_path.glob("*.part"))

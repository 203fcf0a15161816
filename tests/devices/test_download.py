"""The bundle downloader: streaming, size limit, announced sha256/size, optional auth headers."""

from __future__ import annotations

import hashlib
import http.server
import socketserver
import threading

import pytest

from devices.agent.download import Downloader, DownloadError

PAYLOAD = b"x" * 100_000


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        if self.path != "/nolength":
            self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture
def server():
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AuthHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_auth_header_is_sent_and_required(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 401") as err:
        Downloader().fetch(f"{server}/b.ekb", tmp_path / "b", sha256=SHA, size=len(PAYLOAD))
    assert err.value.transient
    out = Downloader(headers={"Authorization": "Bearer s3cret"}).fetch(
        f"{server}/b.ekb", tmp_path / "b", sha256=SHA, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "b.part").exists()


def test_size_limit_and_announced_values(server, tmp_path):
    dl = Downloader(headers={"Authorization": "Bearer s3cret"}, max_bytes=50_000)
    with pytest.raises(DownloadError, match="over the 50000-byte"):
        dl.fetch(f"{server}/b.ekb", tmp_path / "b", sha256=SHA, size=40_000)  # server announces 100000
    with pytest.raises(DownloadError, match="passed") as err:
        dl.fetch(f"{server}/nolength", tmp_path / "b", sha256=SHA, size=40_000)  # no length: cut while streaming
    assert not err.value.transient
    assert not list(tmp_path.iterdir()), "partial files must be removed"
    big = Downloader(headers={"Authorization": "Bearer s3cret"})
    with pytest.raises(DownloadError, match="sha256"):
        big.fetch(f"{server}/b.ekb", tmp_path / "b", sha256="0" * 64, size=len(PAYLOAD))
    with pytest.raises(DownloadError, match="download limit"):
        dl.fetch(f"{server}/b.ekb", tmp_path / "b", sha256=SHA, size=len(PAYLOAD))


def test_unreachable_server_is_transient(tmp_path):
    from agent_testlib import FileServer

    srv = FileServer(tmp_path)
    url = srv.url("x.ekb")
    srv.close()
    with pytest.raises(DownloadError, match="failed") as err:
        Downloader(timeout_s=2).fetch(url, tmp_path / "b", sha256=SHA, size=10)
    assert err.value.transient


def test_redact_url_hides_token_values_only():
    from devices.agent.download import redact_url

    assert redact_url("http://f/x/download?token=ekdt1.abc.def") == "http://f/x/download?token=…"
    assert redact_url("http://f/x?a=1&Token=s&b=2") == "http://f/x?a=1&Token=…&b=2"
    assert redact_url("http://f/tokens/x?q=token") == "http://f/tokens/x?q=token"

"""A minimal W3C WebDriver client (plain HTTP via httpx) for Debian's chromium + chromedriver.

Enough for the dashboard test: open a URL, find elements, read text, click, type, run a script, take a
screenshot. Speaks the W3C protocol chromedriver implements, so no selenium dependency is needed.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["CHROMEDRIVER", "CHROMIUM", "Browser", "WebDriverError"]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One headless chromium session driven through chromedriver on ``port``."""

    def __init__(self, workdir: Path, port: int):
        self.workdir = Path(workdir)
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.session: str | None = None

    def __enter__(self) -> Browser:
        log = open(self.workdir / "chromedriver.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise WebDriverError("chromedriver did not become ready in 20 s")
            time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={self.workdir / 'profile'}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.session:
                self.http.delete(f"/session/{self.session}")
        finally:
            self.http.close()
            if self.proc is not None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()

    # -- protocol --------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        r = self.http.request(method, path, json=body)
        value = r.json().get("value")
        if r.status_code >= 400:
            raise WebDriverError(f"{method} {path}: {value.get('error')}: {value.get('message', '')[:300]}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._call("POST", self._s("/elements"), {"using": "css selector", "value": css})]

    def text(self, element: str) -> str:
        return self._call("GET", self._s(f"/element/{element}/text"))

    def click(self, element: str) -> None:
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def type(self, element: str, text: str) -> None:
        self._call("POST", self._s(f"/element/{element}/value"), {"text": text})

    def execute(self, script: str, *args: Any) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def console(self) -> list[dict]:
        """Browser console entries since the last call (chromedriver's log endpoint)."""
        return self._call("POST", self._s("/se/log"), {"type": "browser"})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    # -- conveniences ----------------------------------------------------------------------------
    def wait(self, css: str, *, contains: str = "", timeout: float = 15.0) -> str:
        """The first element matching ``css`` whose text contains ``contains`` (polls until ``timeout``)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for e in self.find_all(css):
                try:
                    last = self.text(e)
                except WebDriverError:  # re-rendered under us: look again
                    continue
                if contains in last:
                    return e
            time.sleep(0.1)
        raise WebDriverError(f"no {css!r} containing {contains!r} after {timeout}s (last text: {last[:200]!r})")

    def click_link(self, css: str, text: str) -> None:
        self.click(self.wait(css, contains=text))

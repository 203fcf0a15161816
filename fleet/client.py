"""A small HTTP client of the fleet API, used by the ``edgekit fleet`` commands (push, rollout, devices).

Every failure is one :class:`~edgekit.errors.FleetError` line: the server's ``detail`` with its status
code, or why the server could not be reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from edgekit.errors import FleetError

__all__ = ["FleetClient"]


class FleetClient:
    """``FleetClient(url, token)``: thin, synchronous, one method per API call the CLI needs."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        if not url.startswith(("http://", "https://")):
            raise FleetError(f"fleet URL must start with http:// or https://, got {url!r}")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetError(f"cannot reach the fleet API at {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text.strip() or resp.reason_phrase
            hint = " (pass --token or set EDGEKIT_FLEET_TOKEN)" if resp.status_code == 401 else ""
            raise FleetError(f"fleet API {method} {path} → {resp.status_code}: {detail}{hint}")
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise FleetError(f"fleet API {method} {path} answered non-JSON") from exc

    def push(self, bundle: Path) -> dict[str, Any]:
        bundle = Path(bundle)
        if not bundle.is_file():
            raise FleetError(f"bundle {bundle} does not exist")
        with open(bundle, "rb") as fh:
            return self._call("POST", "/api/v1/bundles",
                              files={"file": (bundle.name, fh, "application/octet-stream")})

    def bundles(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/bundles")

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/rollouts", json=body)

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/rollouts/{rollout_id}")

    def rollouts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/rollouts")

    def rollout_command(self, rollout_id: str, verb: str, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        return self._call("POST", f"/api/v1/rollouts/{rollout_id}/{verb}", json=body)

    def devices(self, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"selector": selector} if selector else None
        return self._call("GET", "/api/v1/devices", params=params)

"""Bundles: upload (verified by the registry before it is accepted), list, inspect, download (Range).

Downloads authenticate in one of two ways:

* ``?token=<download token>`` (:mod:`fleet.security.download_token`): what devices use. The fleet puts
  the token into each device's desired-state URL; it names one device and one ``bundle@version`` (and
  the bundle's sha256), expires, and is verified with the fleet's secret
  (``{data_dir}/pki/download-token.key``). No API token is needed then. A token that does not verify —
  forged, expired, for another bundle or other bytes — is answered **403** with the reason, and never
  falls back to another kind of authentication. A device may also send ``X-Edgekit-Device: <its id>``;
  the token must then name that device (a token copied from another device's state is refused). A
  token of a device revoked since it was issued is refused too (the CA's deny-list, read on change).
  A query parameter rather than an ``Authorization`` header, so that the URL in the desired state is
  all a device needs (and API tokens keep the header to themselves).
* otherwise a fleet API token (``read`` scope), unless the app serves downloads publicly.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from edgekit.errors import ConfigError, EdgekitError
from fleet.api.deps import Admin, Ctx, Reader
from fleet.api.util import utc
from fleet.audit import record
from fleet.auth import require_read
from fleet.security.download_token import (
    TOKEN_PARAM,
    DownloadClaims,
    DownloadTokenError,
    load_or_create_secret,
    verify_download_token,
)
from fleet.security.pki import DenyList

__all__ = ["DEVICE_HEADER", "BundleOut", "download_token_secret", "router"]

#: optional request header naming the downloading device; a download token must then be that device's
DEVICE_HEADER = "X-Edgekit-Device"

router = APIRouter(prefix="/api/v1/bundles", tags=["bundles"])


class BundleOut(BaseModel):
    """One registered bundle version (``manifest`` only in the detail view)."""

    name: str
    version: str
    ref: str
    sha256: str
    size: int
    key_id: str | None
    uploaded_at: datetime | None
    precision: str | None = None
    download_url: str
    manifest: dict[str, Any] | None = None

    @classmethod
    def from_info(cls, info, url: str, *, with_manifest: bool = False) -> BundleOut:
        return cls(name=info.name, version=info.version, ref=info.ref, sha256=info.sha256, size=info.size,
                   key_id=info.key_id, uploaded_at=utc(info.uploaded_at),
                   precision=(info.manifest or {}).get("precision"), download_url=url,
                   manifest=info.manifest if with_manifest else None)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BundleOut,
             summary="Upload a signed bundle (multipart field 'file'); refused unless it verifies (admin)")
def upload_bundle(ctx: Ctx, principal: Admin, file: UploadFile = File(...)) -> BundleOut:
    try:
        info = ctx.registry.upload_stream(file.file)
    except EdgekitError as exc:
        # refusals are audited too: who tried to push what, and why it was refused
        with ctx.database.session() as s:
            record(s, principal.actor, "bundle.upload.refused", f"file:{file.filename}",
                   {"reason": str(exc), "error": type(exc).__name__})
        raise
    with ctx.database.session() as s:
        record(s, principal.actor, "bundle.upload", f"bundle:{info.ref}",
               {"sha256": info.sha256, "size": info.size, "key_id": info.key_id, "filename": file.filename})
    return BundleOut.from_info(info, ctx.registry.download_url(info.name, info.version))


@router.get("", response_model=list[BundleOut], summary="Registered bundle versions, newest first")
def list_bundles(ctx: Ctx, _p: Reader, name: str | None = Query(None)) -> list[BundleOut]:
    return [BundleOut.from_info(i, ctx.registry.download_url(i.name, i.version)) for i in ctx.registry.list(name)]


@router.get("/{name}/{version}", response_model=BundleOut, summary="Inspect one version (with its manifest)")
def inspect_bundle(name: str, version: str, ctx: Ctx, _p: Reader) -> BundleOut:
    info = ctx.registry.get(name, version)
    return BundleOut.from_info(info, ctx.registry.download_url(name, version), with_manifest=True)


def download_token_secret(request: Request) -> bytes:
    """The fleet's download-token secret (read once per app; created on first use, mode 0600)."""
    secret = getattr(request.app.state, "download_token_secret", None)
    if secret is None:
        path = Path(request.app.state.ctx.settings.data_dir) / "pki" / "download-token.key"
        try:
            secret = load_or_create_secret(path)
        except ConfigError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                f"download tokens cannot be checked: {exc}") from exc
        request.app.state.download_token_secret = secret
    return secret


def _check_token(name: str, version: str, request: Request) -> DownloadClaims | None:
    """Verify the request's download token; None when it has none; 403 with the reason when it is bad."""
    tokens = request.query_params.getlist(TOKEN_PARAM)
    if not tokens:
        return None
    if len(tokens) > 1:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "more than one download token in the request")
    device = request.headers.get(DEVICE_HEADER)
    try:
        claims = verify_download_token(tokens[0], download_token_secret(request), bundle=name, version=version,
                                       device_id=device if device is not None else None)
    except DownloadTokenError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"download token refused: {exc}") from exc
    try:
        revoked = claims.dev in _deny_list(request)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"download tokens cannot be checked: {exc}") from exc
    if revoked:  # a token issued before the revocation dies with it, not when it expires
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"download token refused: device {claims.dev!r} was revoked")
    return claims


def _deny_list(request: Request) -> DenyList:
    deny = getattr(request.app.state, "deny_list", None)
    if deny is None:
        deny = request.app.state.deny_list = DenyList(Path(request.app.state.ctx.settings.data_dir) / "pki")
    return deny


def _download(name: str, version: str, request: Request) -> FileResponse:
    ctx = request.app.state.ctx
    claims = _check_token(name, version, request)
    if claims is None and not request.app.state.public_downloads:
        require_read(request)
    info = ctx.registry.get(name, version)
    if claims is not None and claims.sha256 is not None and claims.sha256 != info.sha256:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "download token refused: it is for different bundle bytes (sha256 mismatch)")
    path = ctx.registry.file_path(name, version)
    return FileResponse(path, media_type="application/x-edgekit-bundle", filename=f"{name}-{version}.ekb",
                        headers={"etag": f'"{info.sha256}"', "cache-control": "private, max-age=31536000, immutable"})


@router.get("/{name}/{version}/download",
            summary="The bundle's bytes (HTTP Range supported); devices fetch here with their download token",
            response_class=FileResponse)
def download_bundle(
    name: str, version: str, request: Request,
    _token: str | None = Query(None, alias=TOKEN_PARAM,
                               description="A device's download token (from its desired state); replaces the API "
                                           "token. Invalid, expired or for another bundle: 403."),
) -> FileResponse:
    return _download(name, version, request)


@router.head("/{name}/{version}/download", include_in_schema=False)
def head_bundle(name: str, version: str, request: Request) -> FileResponse:
    return _download(name, version, request)

"""Bundles: upload (verified by the registry before it is accepted), list, inspect, download (Range)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from edgekit.errors import EdgekitError
from fleet.api.deps import Admin, Ctx, Reader
from fleet.api.util import utc
from fleet.audit import record
from fleet.auth import require_read

__all__ = ["BundleOut", "router"]

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


def _download(name: str, version: str, request: Request) -> FileResponse:
    ctx = request.app.state.ctx
    if not request.app.state.public_downloads:
        require_read(request)
    info = ctx.registry.get(name, version)
    path = ctx.registry.file_path(name, version)
    return FileResponse(path, media_type="application/x-edgekit-bundle", filename=f"{name}-{version}.ekb",
                        headers={"etag": f'"{info.sha256}"', "cache-control": "private, max-age=31536000, immutable"})


@router.get("/{name}/{version}/download", summary="The bundle's bytes (HTTP Range supported); devices fetch here",
            response_class=FileResponse)
def download_bundle(name: str, version: str, request: Request) -> FileResponse:
    return _download(name, version, request)


@router.head("/{name}/{version}/download", include_in_schema=False)
def head_bundle(name: str, version: str, request: Request) -> FileResponse:
    return _download(name, version, request)

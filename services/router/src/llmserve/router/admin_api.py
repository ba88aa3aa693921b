"""Registry admin routes on the REST bridge: list, show, promote, canary, rollback, retire, audit, export.

They change the same Redis records through the same atomic scripts as the gRPC Registry service and
the CLI; the registry announces every change on NATS, whoever made it. Publishing and importing need
the model store and stay with the Registry service and the CLI.

Every route needs `Authorization: Bearer <LLMSERVE_ADMIN_TOKEN>`; without a configured token the
routes answer 403, so a router never exposes registry changes by accident.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from google.protobuf import json_format
from pydantic import BaseModel, Field

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.v1 import events_pb2


class PromoteBody(BaseModel):
    version: int = Field(ge=1, description="Version to make stable")


class CanaryBody(BaseModel):
    version: int = Field(ge=0, description="Version to send traffic to; 0 removes the canary")
    weight: int = Field(default=0, ge=0, le=100, description="Share of the stable traffic, in percent")


def as_dict(message) -> dict:
    """A registry record as JSON: field names as in the proto, every field present."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def authorizer(admin_token: str):
    """A dependency that admits a request bearing the admin token and returns who made it (for the audit)."""

    def authorize(request: Request) -> str:
        if not admin_token:
            raise ServiceError(events_pb2.ERROR_CODE_PERMISSION_DENIED, "admin routes are off: set LLMSERVE_ADMIN_TOKEN on the router")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            raise ServiceError(events_pb2.ERROR_CODE_PERMISSION_DENIED, "a valid 'Authorization: Bearer <admin token>' header is required")
        who = request.headers.get("x-actor") or (request.client.host if request.client else "unknown")
        return f"rest:{who}"[:64]

    return authorize


async def model_view(catalog: ModelCatalog, name: str) -> dict:
    """One model as the admin routes show it: versions, stable, canary and its weight, fallback."""
    versions = await catalog.list_versions(name)
    if not versions:
        raise ServiceError.not_found(f"model {name!r} is not published")
    canary = await catalog.canary(name)
    return {
        "name": name,
        "stable": next((v.version for v in versions if "stable" in v.aliases), None),
        "canary": canary[0] if canary else None,
        "canary_weight": canary[1] if canary else 0,
        "fallback": await catalog.fallback(name),
        "versions": [as_dict(v) for v in versions],
    }


def admin_router(catalog: ModelCatalog, export, admin_token: str) -> APIRouter:
    """`export` returns a RegistrySnapshot (CatalogBackup.export)."""
    authorize = authorizer(admin_token)
    router = APIRouter(prefix="/admin/v1", tags=["admin"])

    async def _model(name: str) -> dict:
        return await model_view(catalog, name)

    async def _change(audit_id: str) -> dict:
        return as_dict(await catalog.audit_entry(audit_id))

    @router.get("/models", summary="Every model with its versions and aliases")
    async def list_models(_actor: str = Depends(authorize)) -> dict:
        return {"models": [await _model(name) for name in await catalog.model_names()]}

    @router.get("/models/{name}", summary="One model with its versions and aliases")
    async def show_model(name: str, _actor: str = Depends(authorize)) -> dict:
        return await _model(name)

    @router.post("/models/{name}/promote", summary="Make a version the stable one")
    async def promote(name: str, body: PromoteBody, actor: str = Depends(authorize)) -> dict:
        return await _change(await catalog.promote(name, body.version, actor))

    @router.post("/models/{name}/canary", summary="Send a share of the stable traffic to a version (version 0 removes it)")
    async def canary(name: str, body: CanaryBody, actor: str = Depends(authorize)) -> dict:
        return await _change(await catalog.set_canary(name, body.version, body.weight, actor))

    @router.post("/models/{name}/rollback", summary="Make the previous stable version stable again")
    async def rollback(name: str, actor: str = Depends(authorize)) -> dict:
        return await _change(await catalog.rollback(name, actor))

    @router.post("/models/{name}/versions/{version}/retire", summary="Never serve a version again")
    async def retire(name: str, version: int, actor: str = Depends(authorize)) -> dict:
        return await _change(await catalog.retire(name, version, actor))

    @router.get("/audit", summary="The latest registry changes, oldest first")
    async def audit(model: str = "", limit: int = 100, _actor: str = Depends(authorize)) -> dict:
        if not 1 <= limit <= 10_000:
            raise ServiceError.invalid("limit must be between 1 and 10000", param="limit")
        return {"entries": [as_dict(e) for e in await catalog.audit(model, limit)]}

    @router.get("/export", summary="Every registry record, for a backup (restore with `llmserve models import`)")
    async def export_records(_actor: str = Depends(authorize)) -> dict:
        return json_format.MessageToDict(await export(), preserving_proto_field_name=True)

    return router

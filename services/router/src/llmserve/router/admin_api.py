"""Registry admin routes on the REST bridge: list, show, promote, canary, rollback, retire, fallback, audit, export.

The routes are a REST face of the Registry service: each one is a call to its gRPC API, which checks
the guard, makes the change and audits it; the router itself writes nothing.

- With LLMSERVE_AUTH=required a route needs an admin key (`Authorization: Bearer <key>`); the router
  checks it and forwards it, so the registry audits the change under the key's name.
- With auth off the routes need `Authorization: Bearer <LLMSERVE_ADMIN_TOKEN>`; without a configured
  token they answer 403, so a router never exposes registry changes by accident.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from google.protobuf import json_format
from pydantic import BaseModel, Field

from llmserve.common.auth import ADMIN, Authenticator
from llmserve.common.errors import ServiceError
from llmserve.common.registry_client import RegistryClient
from llmserve.v1 import events_pb2, registry_pb2


class PromoteBody(BaseModel):
    version: int = Field(ge=1, description="Version to make stable")


class CanaryBody(BaseModel):
    version: int = Field(ge=0, description="Version to send traffic to; 0 removes the canary")
    weight: int = Field(default=0, ge=0, le=100, description="Share of the stable traffic, in percent")


class FallbackBody(BaseModel):
    fallback: str = Field(default="", description="Model served instead while this one has no live worker; empty removes it")


def as_dict(message) -> dict:
    """A registry record as JSON: field names as in the proto, every field present."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def authorizer(authenticator: Authenticator, admin_token: str):
    """A dependency that admits an admin caller and returns what the registry call carries:
    (the Authorization value to forward, the actor for the audit when auth is off)."""

    async def authorize(request: Request) -> tuple[str, str]:
        given = request.headers.get("authorization", "")
        if authenticator.required:
            peer = request.client.host if request.client else ""
            await authenticator.authenticate(given, ADMIN, peer=peer)
            return given, ""
        if not admin_token:
            raise ServiceError(events_pb2.ERROR_CODE_PERMISSION_DENIED, "admin routes are off: set LLMSERVE_ADMIN_TOKEN on the router")
        if not hmac.compare_digest(given.encode("latin-1", "replace"), f"Bearer {admin_token}".encode()):
            raise ServiceError(events_pb2.ERROR_CODE_PERMISSION_DENIED, "a valid 'Authorization: Bearer <admin token>' header is required")
        who = request.headers.get("x-actor") or (request.client.host if request.client else "unknown")
        return "", f"rest:{who}"[:64]

    return authorize


def model_view(name: str, listed: registry_pb2.ListVersionsResponse) -> dict:
    """One model as the admin routes show it: versions, stable, canary and its weight, fallback."""
    versions = [v for v in listed.versions if v.name == name]
    if not versions:
        raise ServiceError.not_found(f"model {name!r} is not published")
    canary = next((v for v in versions if "canary" in v.aliases), None)
    return {
        "name": name,
        "stable": next((v.version for v in versions if "stable" in v.aliases), None),
        "canary": canary.version if canary else None,
        "canary_weight": canary.canary_weight if canary else 0,
        "fallback": listed.fallbacks.get(name) or None,
        "versions": [as_dict(v) for v in versions],
    }


def admin_router(registry: RegistryClient, authenticator: Authenticator, admin_token: str) -> APIRouter:
    authorize = authorizer(authenticator, admin_token)
    router = APIRouter(prefix="/admin/v1", tags=["admin"])

    async def _change(method: str, request, caller: tuple[str, str]) -> dict:
        authorization, actor = caller
        request.actor = actor
        return as_dict((await registry.call(method, request, authorization=authorization)).entry)

    @router.get("/models", summary="Every model with its versions and aliases")
    async def list_models(caller: tuple[str, str] = Depends(authorize)) -> dict:
        listed = await registry.call("ListVersions", registry_pb2.ListVersionsRequest(), authorization=caller[0])
        names = sorted({v.name for v in listed.versions})
        return {"models": [model_view(name, listed) for name in names]}

    @router.get("/models/{name}", summary="One model with its versions and aliases")
    async def show_model(name: str, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return model_view(name, await registry.call("ListVersions", registry_pb2.ListVersionsRequest(name=name), authorization=caller[0]))

    @router.post("/models/{name}/promote", summary="Make a version the stable one")
    async def promote(name: str, body: PromoteBody, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return await _change("Promote", registry_pb2.PromoteRequest(name=name, version=body.version), caller)

    @router.post("/models/{name}/canary", summary="Send a share of the stable traffic to a version (version 0 removes it)")
    async def canary(name: str, body: CanaryBody, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return await _change("SetCanary", registry_pb2.SetCanaryRequest(name=name, version=body.version, weight=body.weight), caller)

    @router.post("/models/{name}/rollback", summary="Make the previous stable version stable again")
    async def rollback(name: str, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return await _change("Rollback", registry_pb2.RollbackRequest(name=name), caller)

    @router.post("/models/{name}/versions/{version}/retire", summary="Never serve a version again")
    async def retire(name: str, version: int, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return await _change("Retire", registry_pb2.RetireRequest(name=name, version=version), caller)

    @router.post("/models/{name}/fallback", summary="Serve another model while this one has no live worker (empty removes it)")
    async def fallback(name: str, body: FallbackBody, caller: tuple[str, str] = Depends(authorize)) -> dict:
        return await _change("SetFallback", registry_pb2.SetFallbackRequest(name=name, fallback=body.fallback), caller)

    @router.get("/audit", summary="The latest registry changes, oldest first")
    async def audit(model: str = "", limit: int = 100, caller: tuple[str, str] = Depends(authorize)) -> dict:
        if not 1 <= limit <= 10_000:
            raise ServiceError.invalid("limit must be between 1 and 10000", param="limit")
        listed = await registry.call("ListAudit", registry_pb2.ListAuditRequest(name=model, limit=limit), authorization=caller[0])
        return {"entries": [as_dict(e) for e in listed.entries]}

    @router.get("/export", summary="Every registry record, for a backup (restore with `llmserve models import`)")
    async def export_records(caller: tuple[str, str] = Depends(authorize)) -> dict:
        snapshot = await registry.call("Export", registry_pb2.ExportRequest(), authorization=caller[0])
        return json_format.MessageToDict(snapshot, preserving_proto_field_name=True)

    return router

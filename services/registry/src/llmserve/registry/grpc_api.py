"""The gRPC Registry service: model records, aliases, backups. Changes go through ModelCatalog's Lua scripts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from prometheus_client import Counter

from llmserve.common.catalog import CatalogBackup, ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.registry import publish
from llmserve.registry.guard import RegistryGuard
from llmserve.v1 import registry_pb2, registry_pb2_grpc

LOOKUPS = Counter("llmserve_registry_lookups_total", "Registry reads served over gRPC, by method.", ["method"])
CHANGES = Counter("llmserve_registry_changes_total", "Registry changes made over gRPC, by method.", ["method"])


def actor_of(requested: str, context: grpc.aio.ServicerContext, default: str = "grpc") -> str:
    if requested:
        return requested[:64]
    peer = context.peer() or ""
    return f"{default}:{peer}" if peer else default


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, catalog: ModelCatalog, backup: CatalogBackup, guard: RegistryGuard, store: Path) -> None:
        self._catalog = catalog
        self._backup = backup
        self._guard = guard
        self._store = store

    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListVersionsResponse:
        LOOKUPS.labels(method="ListVersions").inc()
        return registry_pb2.ListVersionsResponse(versions=await self._catalog.list_versions(request.name))

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ModelVersion:
        LOOKUPS.labels(method="GetVersion").inc()
        if not request.name:
            raise ServiceError.invalid("name is required", param="name")
        if request.WhichOneof("selector") == "version":
            return await self._catalog.get(request.name, request.version)
        return await self._catalog.get_by_alias(request.name, request.alias or "stable")

    async def ListAudit(self, request: registry_pb2.ListAuditRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListAuditResponse:
        LOOKUPS.labels(method="ListAudit").inc()
        return registry_pb2.ListAuditResponse(entries=await self._catalog.audit(request.name, request.limit or 100))

    async def Export(self, request: registry_pb2.ExportRequest, context: grpc.aio.ServicerContext) -> registry_pb2.RegistrySnapshot:
        LOOKUPS.labels(method="Export").inc()
        await self._guard.check()
        return await self._backup.export()

    async def Import(self, request: registry_pb2.RegistrySnapshot, context: grpc.aio.ServicerContext) -> registry_pb2.ImportResponse:
        CHANGES.labels(method="Import").inc()
        models, versions = await self._backup.import_(request, actor_of("", context), min_counters=self._guard.last_versions())
        await self._guard.check()
        return registry_pb2.ImportResponse(models=models, versions=versions)

    async def Publish(self, request: registry_pb2.PublishRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        CHANGES.labels(method="Publish").inc()
        actor = actor_of(request.actor, context)
        kind = request.WhichOneof("source")
        if kind is None:
            raise ServiceError.invalid("a source is required: directory, gguf_file or packaged_default", param="source")
        if kind != "packaged_default" and not request.name:
            raise ServiceError.invalid("name is required", param="name")
        try:
            if kind == "directory":
                return await publish.publish_directory(
                    self._catalog, self._store, request.name, Path(request.directory), make_stable=request.make_stable,
                    show_progress=False, guard=self._guard, actor=actor,
                )
            if kind == "gguf_file":
                return await publish.publish_gguf(
                    self._catalog, self._store, request.name, Path(request.gguf_file), make_stable=request.make_stable,
                    show_progress=False, guard=self._guard, actor=actor,
                )
            return await publish.ensure_default_model(self._catalog, self._store, show_progress=False, guard=self._guard, actor=actor)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ServiceError.invalid(str(exc), param="source") from None
        except ModuleNotFoundError as exc:
            raise ServiceError.invalid(
                f"converting GGUF needs llmserve-model-worker (torch) installed next to the registry ({exc.name} is missing); "
                "publish a transformers directory, or use `llmserve models publish` where it is installed",
                param="gguf_file",
            ) from None

    async def Promote(self, request: registry_pb2.PromoteRequest, context: grpc.aio.ServicerContext) -> registry_pb2.AliasChange:
        return await self._change("Promote", lambda actor: self._catalog.promote(request.name, request.version, actor), request.actor, context)

    async def SetCanary(self, request: registry_pb2.SetCanaryRequest, context: grpc.aio.ServicerContext) -> registry_pb2.AliasChange:
        return await self._change(
            "SetCanary", lambda actor: self._catalog.set_canary(request.name, request.version, request.weight, actor), request.actor, context
        )

    async def Rollback(self, request: registry_pb2.RollbackRequest, context: grpc.aio.ServicerContext) -> registry_pb2.AliasChange:
        return await self._change("Rollback", lambda actor: self._catalog.rollback(request.name, actor), request.actor, context)

    async def Retire(self, request: registry_pb2.RetireRequest, context: grpc.aio.ServicerContext) -> registry_pb2.AliasChange:
        return await self._change("Retire", lambda actor: self._catalog.retire(request.name, request.version, actor), request.actor, context)

    async def _change(
        self, method: str, change: Callable[[str], Awaitable[str]], actor: str, context: grpc.aio.ServicerContext
    ) -> registry_pb2.AliasChange:
        CHANGES.labels(method=method).inc()
        await self._guard.check()
        audit_id = await change(actor_of(actor, context))
        return registry_pb2.AliasChange(entry=await self._catalog.audit_entry(audit_id))

"""The gRPC Registry service: the one writer of model records, aliases, fallbacks, tenant limits and
API keys. Every change passes the guard (guard.py) and lands in the audit stream, whoever asked: the
CLI, the router's admin routes or any gRPC client.

With auth required, the actor in the audit is the caller's key name; with auth off it is what the
request names (or the peer's address).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter

from llmserve.common import api_keys
from llmserve.common.auth import ADMIN, INFERENCE, Authenticator
from llmserve.common.catalog import CatalogBackup, ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import CALLER
from llmserve.common.keys import RedisKeys
from llmserve.common.redisio import replicated
from llmserve.registry import publish, records
from llmserve.registry.guard import RegistryGuard
from llmserve.v1 import registry_pb2, registry_pb2_grpc

LOOKUPS = Counter("llmserve_registry_lookups_total", "Registry reads served over gRPC, by method.", ["method"])
CHANGES = Counter("llmserve_registry_changes_total", "Registry changes made over gRPC, by method.", ["method"])

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
# Reads any key may make; every other method of the service needs an admin key.
_READS = frozenset({"ListVersions", "GetVersion", "ListAudit"})
# Progress messages of PublishStream: at most one per stage and this many seconds (and each stage's end).
_PROGRESS_EVERY_S = 0.2

log = structlog.get_logger()

# Trailing metadata of a registry change: how many Redis replicas had it when it was answered.
REPLICAS_METADATA = "llmserve-replicas-acknowledged"


def role_of(method: str) -> int | None:
    """The key role a Registry method needs; None for health and reflection (open)."""
    service, _, name = method.strip("/").partition("/")
    if service != REGISTRY_SERVICE:
        return None
    return INFERENCE if name in _READS else ADMIN


def actor_of(requested: str, context: grpc.aio.ServicerContext, default: str = "grpc") -> str:
    caller = CALLER.get()
    if caller is not None:
        return caller.name[:64]
    if requested:
        return requested[:64]
    peer = context.peer() or ""
    return f"{default}:{peer}" if peer else default


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(
        self,
        catalog: ModelCatalog,
        backup: CatalogBackup,
        guard: RegistryGuard,
        store: Path,
        redis: aioredis.Redis,
        keys: RedisKeys,
        authenticator: Authenticator,
        wait_replicas: int = 0,
        wait_timeout_s: float = 3.0,
    ) -> None:
        self._wait_replicas = wait_replicas
        self._wait_timeout_s = wait_timeout_s
        self._catalog = catalog
        self._backup = backup
        self._guard = guard
        self._store = store
        self._redis = redis
        self._keys = keys
        self._auth = authenticator

    # -- reads ---------------------------------------------------------------------------------
    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListVersionsResponse:
        LOOKUPS.labels(method="ListVersions").inc()
        response = registry_pb2.ListVersionsResponse(versions=await self._catalog.list_versions(request.name))
        for name in sorted({v.name for v in response.versions}):
            fallback = await self._catalog.fallback(name)
            if fallback:
                response.fallbacks[name] = fallback
        return response

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

    async def ListTenants(self, request: registry_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListTenantsResponse:
        LOOKUPS.labels(method="ListTenants").inc()
        return registry_pb2.ListTenantsResponse(tenants=await records.list_tenants(self._redis, self._keys))

    async def ListKeys(self, request: registry_pb2.ListKeysRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ListKeysResponse:
        LOOKUPS.labels(method="ListKeys").inc()
        now = time.time()
        found = await api_keys.list_keys(self._redis, self._keys)
        return registry_pb2.ListKeysResponse(keys=[k for k in found if request.include_inactive or not api_keys.inactive_reason(k, now)])

    # -- changes -------------------------------------------------------------------------------
    async def _write(self, method: str, change: Callable[[], Awaitable], context: grpc.aio.ServicerContext):
        """Every change: counted, refused by the guard when Redis lost the registry, made, then
        answered once replicated (see _replicated)."""
        CHANGES.labels(method=method).inc()
        await self._guard.check()
        result = await change()
        await self._replicated(method, context)
        return result

    async def _replicated(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """With LLMSERVE_REGISTRY_WAIT_REPLICAS, waits for that many Redis replicas to have the change,
        so a primary that dies right after cannot take it along, and says in the answer's trailing
        metadata how many did (fewer after the timeout: the change is made, not yet safe)."""
        if self._wait_replicas <= 0:
            return
        acked = await replicated(self._redis, self._wait_replicas, self._wait_timeout_s)
        context.set_trailing_metadata(((REPLICAS_METADATA, str(acked)),))
        if acked < self._wait_replicas:
            log.warning("registry_change_not_replicated", method=method, replicas=acked, wanted=self._wait_replicas)

    async def Import(self, request: registry_pb2.RegistrySnapshot, context: grpc.aio.ServicerContext) -> registry_pb2.ImportResponse:
        CHANGES.labels(method="Import").inc()
        # No guard first: importing a backup is how a lost registry comes back.
        models, versions = await self._backup.import_(request, actor_of("", context), min_counters=self._guard.last_versions())
        await self._guard.check()
        return registry_pb2.ImportResponse(models=models, versions=versions)

    async def Reinit(self, request: registry_pb2.ReinitRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ReinitResponse:
        CHANGES.labels(method="Reinit").inc()
        registry_id = await self._guard.reinit(self._redis, self._keys)
        await records.audit_reinit(self._redis, self._keys, registry_id, actor_of(request.actor, context))
        return registry_pb2.ReinitResponse(registry_id=registry_id, last_versions=self._guard.last_versions())

    async def Publish(self, request: registry_pb2.PublishRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ModelVersion:
        CHANGES.labels(method="Publish").inc()
        version = await self._publish(request, context, publish._no_progress)
        await self._replicated("Publish", context)
        return version

    async def PublishStream(
        self, request: registry_pb2.PublishRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.PublishProgress]:
        CHANGES.labels(method="PublishStream").inc()
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[registry_pb2.PublishStage] = asyncio.Queue()
        last_sent: dict[str, float] = {}

        def progress(stage: str, done: int, total: int) -> None:  # called on publish's worker threads
            now = time.monotonic()
            if done < total and now - last_sent.get(stage, 0.0) < _PROGRESS_EVERY_S:
                return
            last_sent[stage] = now
            loop.call_soon_threadsafe(updates.put_nowait, registry_pb2.PublishStage(name=stage, done_bytes=done, total_bytes=total))

        task = asyncio.ensure_future(self._publish(request, context, progress))
        try:
            while not task.done() or not updates.empty():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield registry_pb2.PublishProgress(stage=getter.result())
                else:
                    getter.cancel()
            await self._replicated("PublishStream", context)
            yield registry_pb2.PublishProgress(version=task.result())
        finally:
            task.cancel()

    async def _publish(
        self, request: registry_pb2.PublishRequest, context: grpc.aio.ServicerContext, progress: publish.Progress
    ) -> registry_pb2.ModelVersion:
        actor = actor_of(request.actor, context)
        kind = request.WhichOneof("source")
        if kind is None:
            raise ServiceError.invalid("a source is required: directory, gguf_file or packaged_default", param="source")
        if kind != "packaged_default" and not request.name:
            raise ServiceError.invalid("name is required", param="name")
        store, guard = self._store, self._guard
        try:
            if kind == "directory":
                return await publish.publish_directory(
                    self._catalog, store, request.name, Path(request.directory), make_stable=request.make_stable,
                    progress=progress, move=request.move and _inside(Path(request.directory), store), guard=guard, actor=actor,
                )
            if kind == "gguf_file":
                return await publish.publish_gguf(
                    self._catalog, store, request.name, Path(request.gguf_file), make_stable=request.make_stable,
                    progress=progress, guard=guard, actor=actor,
                )
            return await publish.ensure_default_model(self._catalog, store, progress=progress, guard=guard, actor=actor)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ServiceError.invalid(f"{exc} (paths are read on the registry's host)", param="source") from None

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

    async def SetFallback(self, request: registry_pb2.SetFallbackRequest, context: grpc.aio.ServicerContext) -> registry_pb2.AliasChange:
        return await self._change(
            "SetFallback", lambda actor: self._catalog.set_fallback(request.name, request.fallback or None, actor), request.actor, context
        )

    async def _change(
        self, method: str, change: Callable[[str], Awaitable[str]], actor: str, context: grpc.aio.ServicerContext
    ) -> registry_pb2.AliasChange:
        audit_id = await self._write(method, lambda: change(actor_of(actor, context)), context)
        return registry_pb2.AliasChange(entry=await self._catalog.audit_entry(audit_id))

    async def SetTenantLimits(self, request: registry_pb2.SetTenantLimitsRequest, context: grpc.aio.ServicerContext) -> registry_pb2.TenantLimits:
        actor = actor_of(request.actor, context)
        return await self._write("SetTenantLimits", lambda: records.set_tenant_limits(self._redis, self._keys, request.limits, actor), context)

    async def CreateKey(self, request: registry_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext) -> registry_pb2.CreateKeyResponse:
        actor = actor_of(request.actor, context)
        key, secret = await self._write("CreateKey", lambda: records.create_key(self._redis, self._keys, request, actor), context)
        return registry_pb2.CreateKeyResponse(key=key, secret=secret)

    async def RevokeKey(self, request: registry_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> registry_pb2.ApiKey:
        actor = actor_of(request.actor, context)
        key = await self._write("RevokeKey", lambda: records.revoke_key(self._redis, self._keys, request.id, actor), context)
        self._auth.forget(key.id)  # this process at once; routers when the announcement arrives
        return key


def _inside(path: Path, store: Path) -> bool:
    """Only staging copies inside the store may be moved: never a directory the publisher keeps."""
    try:
        path.resolve().relative_to(store.resolve())
        return True
    except ValueError:
        return False

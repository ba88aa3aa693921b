"""python -m llmserve.registry — serves the model registry over gRPC and announces its changes on NATS."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import structlog

from llmserve.common.catalog import CatalogBackup
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import ErrorInterceptor, add_health_and_reflection, follow_readiness
from llmserve.common.metrics_server import serve_metrics
from llmserve.common.runtime import run_main, service_runtime
from llmserve.registry.announcer import ChangeAnnouncer
from llmserve.registry.grpc_api import RegistryServicer
from llmserve.registry.guard import RegistryGuard
from llmserve.registry.settings import RegistrySettings
from llmserve.v1 import events_pb2, registry_pb2, registry_pb2_grpc

log = structlog.get_logger()
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


async def run(settings: RegistrySettings) -> None:
    common, grpc_addr = settings.common, settings.grpc_addr
    async with service_runtime(common, events_pb2.INSTANCE_KIND_REGISTRY) as rt:
        # Listeners first: health answers NOT_SERVING (and calls UNAVAILABLE) while Redis or NATS is away.
        serve_metrics(settings.metrics_addr, rt.readiness)
        catalog = rt.catalog(rt.redis)
        guard = RegistryGuard(catalog, common.model_store, common.redis_url, common.key_prefix)
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        servicer = RegistryServicer(catalog, CatalogBackup(rt.redis, rt.keys, catalog), guard, common.model_store)
        registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
        health = add_health_and_reflection(server, [REGISTRY_SERVICE])
        await follow_readiness(health, [REGISTRY_SERVICE], rt.readiness)
        if server.add_insecure_port(grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {grpc_addr}")
        await server.start()
        rt.stack.push_async_callback(server.stop, 5)
        log.info("registry_listening", grpc=grpc_addr)
        redis = await rt.connect_redis()
        nc = await rt.connect_nats()
        rt.start_heartbeat(nc)
        announcer = asyncio.create_task(ChangeAnnouncer(redis, rt.keys, nc, rt.subjects).run(), name="announcer")
        rt.started()
        while not rt.stop.is_set():
            # Ready while Redis holds the registry the model store knows of (see guard.py).
            try:
                await guard.check()
                rt.readiness.clear("registry")
            except ServiceError as exc:
                rt.readiness.block("registry", exc.message)
            except Exception as exc:  # Redis unreachable
                rt.readiness.block("registry", f"Redis unreachable: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), common.heartbeat_interval_s)
        announcer.cancel()


def main() -> int:
    settings = RegistrySettings.from_env()
    return run_main("registry", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

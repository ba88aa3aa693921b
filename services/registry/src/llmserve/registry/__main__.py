"""python -m llmserve.registry — serves the model registry over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import grpc
import redis.asyncio as aioredis
import structlog

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import CommonSettings, env_str
from llmserve.common.grpc_server import ErrorInterceptor, add_health_and_reflection, set_serving
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import connect_nats
from llmserve.common.subjects import Subjects
from llmserve.registry.grpc_api import RegistryServicer
from llmserve.v1 import events_pb2, registry_pb2, registry_pb2_grpc

log = structlog.get_logger()
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


async def run(common: CommonSettings, grpc_addr: str) -> None:
    stop = shutdown_event()
    instance_id = new_instance_id("registry")
    structlog.contextvars.bind_contextvars(instance=instance_id)
    subjects = Subjects(common.subject_prefix)
    async with contextlib.AsyncExitStack() as stack:
        redis = aioredis.from_url(common.redis_url)
        stack.push_async_callback(redis.aclose)
        nc = await connect_nats(common.nats_url, name=instance_id)
        stack.push_async_callback(nc.drain)
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(ModelCatalog(redis, RedisKeys(common.key_prefix))), server)
        health = add_health_and_reflection(server, [REGISTRY_SERVICE])
        if server.add_insecure_port(grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {grpc_addr}")
        await server.start()
        await set_serving(health, [REGISTRY_SERVICE], True)
        heartbeat = HeartbeatPublisher(nc, subjects, instance_id, events_pb2.INSTANCE_KIND_REGISTRY, common.heartbeat_interval_s)
        heartbeat.start()
        stack.push_async_callback(heartbeat.stop)
        log.info("registry_listening", grpc=grpc_addr)
        await stop.wait()
        await server.stop(5)


def main() -> int:
    common = CommonSettings.from_env()
    configure_logging("registry", common.log_format, common.log_level)
    # LLMSERVE_REGISTRY_GRPC_ADDR: where the Registry gRPC service listens.
    addr = env_str(os.environ, "LLMSERVE_REGISTRY_GRPC_ADDR", "127.0.0.1:50052")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(common, addr))
    return 0


if __name__ == "__main__":
    sys.exit(main())

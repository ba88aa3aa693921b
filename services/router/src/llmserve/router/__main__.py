"""python -m llmserve.router — the gRPC Inference API (and the REST bridge)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import redis.asyncio as aioredis
import structlog

from llmserve.common.catalog import ModelCatalog
from llmserve.common.grpc_server import ErrorInterceptor, add_health_and_reflection, set_serving
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.liveness import DEAD_AFTER_BEATS, LivenessTable
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import connect_nats
from llmserve.common.subjects import Subjects
from llmserve.router.generation import GenerationService, StreamTimeouts
from llmserve.router.grpc_api import InferenceServicer
from llmserve.router.settings import RouterSettings
from llmserve.v1 import events_pb2, inference_pb2, inference_pb2_grpc

log = structlog.get_logger()

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
# Longest time open streams get to finish after SIGTERM.
SHUTDOWN_GRACE_S = 30.0


async def _track_readiness(health, liveness: LivenessTable, heartbeat: HeartbeatPublisher, stop: asyncio.Event) -> None:
    """The router is ready (health SERVING) while at least one worker is live."""
    ready: bool | None = None
    while not stop.is_set():
        now_ready = bool(liveness.live_workers())
        if now_ready != ready:
            ready = now_ready
            heartbeat.ready = ready
            await set_serving(health, [INFERENCE_SERVICE], ready)
            log.info("router_readiness", ready=ready)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def run(settings: RouterSettings) -> None:
    stop = shutdown_event()
    common = settings.common
    instance_id = new_instance_id("router")
    structlog.contextvars.bind_contextvars(instance=instance_id)
    subjects = Subjects(common.subject_prefix)
    async with contextlib.AsyncExitStack() as stack:
        redis = aioredis.from_url(common.redis_url)
        stack.push_async_callback(redis.aclose)
        nc = await connect_nats(common.nats_url, name=instance_id)
        stack.push_async_callback(nc.drain)
        liveness = LivenessTable(dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s)
        await liveness.subscribe(nc, subjects)
        generation = GenerationService(
            nc,
            subjects,
            StreamTimeouts(settings.submit_timeout_s, settings.queue_timeout_s, settings.stall_timeout_s),
        )
        catalog = ModelCatalog(redis, RedisKeys(common.key_prefix))
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(settings, subjects, generation, catalog, liveness), server
        )
        health = add_health_and_reflection(server, [INFERENCE_SERVICE])
        port = server.add_insecure_port(settings.grpc_addr)
        if port == 0:
            raise SystemExit(f"cannot listen on {settings.grpc_addr}")
        await server.start()
        heartbeat = HeartbeatPublisher(nc, subjects, instance_id, events_pb2.INSTANCE_KIND_ROUTER, common.heartbeat_interval_s)
        heartbeat.start()
        stack.push_async_callback(heartbeat.stop)
        readiness = asyncio.create_task(_track_readiness(health, liveness, heartbeat, stop))
        log.info("router_listening", grpc=settings.grpc_addr)
        await stop.wait()
        log.info("router_stopping")
        await set_serving(health, [INFERENCE_SERVICE], False)
        # New calls are refused from here; open streams get the grace period to finish.
        await server.stop(SHUTDOWN_GRACE_S)
        await readiness


def main() -> int:
    settings = RouterSettings.from_env()
    configure_logging("router", settings.common.log_format, settings.common.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m llmserve.router — the gRPC Inference API (and the REST bridge)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import structlog

from llmserve.common.catalog import CatalogBackup
from llmserve.common.grpc_server import ErrorInterceptor, add_health_and_reflection, set_serving
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.http_server import HttpServer
from llmserve.common.liveness import LivenessTable
from llmserve.common.runtime import run_main, service_runtime
from llmserve.router import metrics
from llmserve.router.admin_api import admin_router
from llmserve.router.generation import GenerationService, StreamTimeouts
from llmserve.router.grpc_api import InferenceServicer
from llmserve.router.rest_api import RestBridge, create_app
from llmserve.router.settings import RouterSettings
from llmserve.router.validation import JobFactory
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


def _fill_router_beat(beat: events_pb2.Heartbeat) -> None:
    beat.requests_total = metrics.RECENT.total
    beat.requests_failed = metrics.RECENT.failed
    beat.recent_ttft_p50_s = metrics.RECENT.ttft_p50()


async def run(settings: RouterSettings) -> None:
    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_ROUTER) as rt:
        redis = rt.connect_redis()
        nc = await rt.connect_nats()
        liveness = await rt.liveness(nc)
        generation = GenerationService(
            nc,
            rt.subjects,
            StreamTimeouts(settings.submit_timeout_s, settings.queue_timeout_s, settings.stall_timeout_s),
            settings.max_migrations,
        )
        await generation.watch_instances()
        catalog = rt.catalog(redis)
        make_job = JobFactory(
            settings.common.default_model, settings.default_max_tokens, settings.max_tokens_limit, rt.subjects.tokens
        )
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(make_job, generation, catalog, liveness), server
        )
        health = add_health_and_reflection(server, [INFERENCE_SERVICE])
        if server.add_insecure_port(settings.grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {settings.grpc_addr}")
        await server.start()
        http = HttpServer(
            create_app(
                RestBridge(make_job, generation, catalog, liveness),
                admin_router(catalog, CatalogBackup(redis, rt.keys, catalog).export, settings.admin_token),
            ),
            settings.http_addr,
            SHUTDOWN_GRACE_S,
        )
        await http.start()
        heartbeat = rt.start_heartbeat(nc, _fill_router_beat)
        readiness = asyncio.create_task(_track_readiness(health, liveness, heartbeat, rt.stop))
        log.info("router_listening", grpc=settings.grpc_addr, http=settings.http_addr)
        await rt.stop.wait()
        log.info("router_stopping")
        await set_serving(health, [INFERENCE_SERVICE], False)
        # New calls are refused from here; open streams get the grace period to finish.
        await asyncio.gather(server.stop(SHUTDOWN_GRACE_S), http.stop())
        await readiness


def main() -> int:
    settings = RouterSettings.from_env()
    return run_main("router", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

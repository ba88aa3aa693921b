"""python -m llmserve.router — the gRPC Inference API (and the REST bridge)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import structlog

from llmserve.common.auth import INFERENCE, Authenticator
from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import refuse_insecure_listen
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import AuthInterceptor, ErrorInterceptor, add_health_and_reflection, follow_readiness
from llmserve.common.http_server import HttpServer
from llmserve.common.liveness import LivenessTable
from llmserve.common.rate_limits import RateLimiter
from llmserve.common.registry_client import RegistryClient
from llmserve.common.runtime import run_main, service_runtime
from llmserve.common.startup import Readiness
from llmserve.router import metrics
from llmserve.router.admin_api import admin_router
from llmserve.router.callers import CallerGate
from llmserve.router.generation import GenerationService, StreamTimeouts
from llmserve.router.grpc_api import InferenceServicer
from llmserve.router.model_calls import ModelCalls
from llmserve.router.rest_api import RestBridge, create_app
from llmserve.router.settings import RouterSettings
from llmserve.router.validation import JobFactory
from llmserve.v1 import events_pb2, inference_pb2, inference_pb2_grpc

log = structlog.get_logger()

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
# Longest time open streams get to finish after SIGTERM.
SHUTDOWN_GRACE_S = 30.0


async def servable(catalog: ModelCatalog, liveness: LivenessTable, model: str) -> str:
    """Why a request for `model` would not be admitted now ("" when it would).

    A scheduler admits a request when it sees a live worker of the version the alias resolves to. A
    scheduler that started a moment ago may not have heard that worker yet: it waits for the worker's
    beat rather than refusing (admission.admit), so any connected scheduler will do."""
    try:
        version = await catalog.resolve(model)
    except ServiceError as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - Redis away: the scheduler could not resolve it either
        return f"Redis unreachable: {exc}"
    if not any(beat.ready for beat in liveness.live(events_pb2.INSTANCE_KIND_SCHEDULER)):
        return "no ready scheduler"
    if not liveness.live_workers(model, version):
        return f"no live worker serves {model} version {version}"
    return ""


async def _track_servable(readiness: Readiness, catalog: ModelCatalog, liveness: LivenessTable, model: str, stop: asyncio.Event) -> None:
    """Blocks readiness under "cluster" while the default model could not be served."""
    while not stop.is_set():
        why = await servable(catalog, liveness, model)
        if why:
            readiness.block("cluster", why)
        else:
            readiness.clear("cluster")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def _role_of(method: str) -> int | None:
    """Inference calls need a key (any role); health and reflection stay open."""
    return INFERENCE if method.startswith(f"/{INFERENCE_SERVICE}/") else None


def _fill_router_beat(beat: events_pb2.Heartbeat) -> None:
    beat.requests_total = metrics.RECENT.total
    beat.requests_failed = metrics.RECENT.failed
    beat.recent_ttft_p50_s = metrics.RECENT.ttft_p50()
    beat.model_loads.extend(metrics.ttft_loads())


async def run(settings: RouterSettings) -> None:
    refuse_insecure_listen(settings.common, "router", settings.grpc_addr, settings.http_addr)
    if settings.common.auth_required and settings.admin_token:
        log.warning("admin_token_ignored", reason="LLMSERVE_AUTH=required: the admin routes take admin API keys")
    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_ROUTER) as rt:
        # Everything is built on the not yet connected clients, and both APIs listen before the
        # router waits for NATS and Redis: health says NOT_SERVING and calls get UNAVAILABLE meanwhile.
        nc = rt.nats
        # Not ready until _track_servable has seen the default model servable: without this block the
        # router said "ready" for the moment between its own start-up and that first check.
        rt.readiness.block("cluster", "the default model's servability is not checked yet")
        liveness = rt.liveness_table()
        generation = GenerationService(
            nc,
            rt.subjects,
            StreamTimeouts(settings.submit_timeout_s, settings.queue_timeout_s, settings.stall_timeout_s, settings.submit_retry_s),
            settings.max_migrations,
        )
        catalog = rt.catalog(rt.redis)
        make_job = JobFactory(
            settings.common.default_model, settings.default_max_tokens, settings.max_tokens_limit, rt.subjects.tokens
        )
        authenticator = Authenticator(
            rt.redis, rt.keys, settings.common.auth_required, on_refused=lambda reason: metrics.AUTH_FAILURES.labels(reason=reason).inc()
        )
        gate = CallerGate(make_job, RateLimiter(rt.redis, rt.keys))
        model_calls = ModelCalls(nc, rt.subjects, catalog, settings.common.default_model, settings.submit_timeout_s)
        registry = RegistryClient(settings.common.registry_addr)
        rt.stack.push_async_callback(registry.close)
        # ErrorInterceptor first: it turns the key check's refusals into statuses too.
        server = grpc.aio.server(interceptors=[ErrorInterceptor(), AuthInterceptor(authenticator, _role_of)])
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(gate, generation, catalog, liveness, model_calls), server)
        health = add_health_and_reflection(server, [INFERENCE_SERVICE])
        await follow_readiness(health, [INFERENCE_SERVICE], rt.readiness)
        if server.add_insecure_port(settings.grpc_addr) == 0:
            raise SystemExit(f"cannot listen on {settings.grpc_addr}")
        await server.start()
        http = HttpServer(
            create_app(
                RestBridge(gate, generation, catalog, liveness, model_calls),
                rt.readiness,
                authenticator,
                admin_router(registry, authenticator, settings.admin_token),
            ),
            settings.http_addr,
            SHUTDOWN_GRACE_S,
        )
        await http.start()

        stopped = False

        async def stop_listeners() -> None:
            # New calls are refused from here; open streams get the grace period to finish.
            nonlocal stopped
            if not stopped:
                stopped = True
                generation.leaving = True
                rt.readiness.block("stopping", "shutting down")
                await asyncio.gather(server.stop(SHUTDOWN_GRACE_S), http.stop())

        # Also when a signal ends one of the waits below.
        rt.stack.push_async_callback(stop_listeners)
        log.info("router_listening", grpc=settings.grpc_addr, http=settings.http_addr)
        await rt.connect_redis()
        await rt.connect_nats()
        await rt.listen_liveness(liveness)
        await authenticator.follow_revocations(nc, rt.subjects)
        rt.reconnect_hooks.append(authenticator.forget_all)
        await generation.watch_instances()
        rt.start_heartbeat(nc, _fill_router_beat)
        model = settings.common.default_model
        tracking = asyncio.create_task(_track_servable(rt.readiness, catalog, liveness, model, rt.stop))
        rt.started()
        await rt.stop.wait()
        log.info("router_stopping")
        # Before the NATS connection drains (when the runtime's block ends): open streams need it.
        await stop_listeners()
        await tracking


def main() -> int:
    settings = RouterSettings.from_env()
    return run_main("router", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

"""gRPC server plumbing shared by the router and the registry: errors, health, reflection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmserve.common.errors import ServiceError, dependency_error
from llmserve.common.startup import Readiness

log = structlog.get_logger()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    exc = dependency_error(exc) or exc
    if isinstance(exc, ServiceError):
        if exc.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", f"{exc.retry_after_s:.0f}"),))
        await context.abort(exc.grpc_status, exc.message)
    log.exception("rpc_failed")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns ServiceError into its status code and anything unexpected into INTERNAL, in one place.

    Each RPC also starts with a clean logging context, so that ids bound by a handler never leak
    into another call's log lines.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                structlog.contextvars.bind_contextvars(rpc=details.method)
                try:
                    return await inner_uu(request, context)
                except (ServiceError, Exception) as exc:  # noqa: BLE001 - the one place errors become statuses
                    if _is_abort(exc):
                        raise
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                structlog.contextvars.bind_contextvars(rpc=details.method)
                try:
                    async for item in inner_us(request, context):
                        yield item
                except (ServiceError, Exception) as exc:  # noqa: BLE001
                    if _is_abort(exc):
                        raise
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this to unwind the handler; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError)


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Registers grpc.health.v1 and reflection; returns the health servicer so readiness can be set."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        await health_servicer.set(name, status)


async def follow_readiness(health_servicer: health.aio.HealthServicer, names: Iterable[str], readiness: Readiness) -> None:
    """Health reports the process's readiness from now on: NOT_SERVING until it is ready."""
    names = list(names)
    tasks: set[asyncio.Task] = set()

    def _changed(ready: bool) -> None:
        task = asyncio.ensure_future(set_serving(health_servicer, names, ready))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    readiness.listeners.append(_changed)
    await set_serving(health_servicer, names, readiness.ready)

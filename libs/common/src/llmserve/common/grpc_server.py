"""gRPC server plumbing shared by the router and the registry: errors, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmserve.common.auth import Authenticator, Principal
from llmserve.common.errors import ServiceError, dependency_error
from llmserve.common.startup import Readiness

log = structlog.get_logger()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    exc = dependency_error(exc) or exc
    if isinstance(exc, ServiceError):
        # The reason is finer than the status ("tenant_limit", "cannot_convert"): clients may act on it.
        trailers = [("llmserve-reason", exc.reason)]
        if exc.retry_after_whole_s is not None:
            trailers.append(("retry-after", str(exc.retry_after_whole_s)))
        context.set_trailing_metadata(tuple(trailers))
        await context.abort(exc.grpc_status, exc.message)
    log.exception("rpc_failed")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def _each_call_inside(handler: grpc.RpcMethodHandler, scope: Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager]) -> grpc.RpcMethodHandler:
    """The handler with every call (unary or streaming) run inside `scope(context)`."""
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                async for item in inner_us(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer, handler.response_serializer)
    return handler


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

        @contextlib.asynccontextmanager
        async def statuses(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            structlog.contextvars.bind_contextvars(rpc=details.method)
            try:
                yield
            except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                if _is_abort(exc):
                    raise
                await _abort(context, exc)

        return _each_call_inside(handler, statuses)


# The caller of the RPC being handled (None with auth off), set by AuthInterceptor.
CALLER = contextvars.ContextVar[Principal | None]("caller", default=None)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the `authorization: Bearer <key>` metadata of every call, in one place.

    `role_of(method)` names the role a method needs, or None for methods open to anyone (health,
    reflection). The check runs inside the handler, so ErrorInterceptor (listed before this one)
    turns a refusal into UNAUTHENTICATED or PERMISSION_DENIED; the handler reads the caller from CALLER.
    """

    def __init__(self, authenticator: Authenticator, role_of: Callable[[str], int | None]) -> None:
        self._auth = authenticator
        self._role_of = role_of

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        role = self._role_of(details.method)
        if handler is None or role is None or not self._auth.required:
            return handler
        authorization = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")

        @contextlib.asynccontextmanager
        async def checked(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            CALLER.set(await self._auth.authenticate(authorization, role, peer=context.peer() or ""))
            yield

        return _each_call_inside(handler, checked)


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

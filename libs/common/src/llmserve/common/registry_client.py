"""A client of the Registry service, for the CLI and the router's admin routes.

The Registry service is the only writer of registry records; its clients send the caller's API key
(`authorization: Bearer <key>`) so the registry checks it, guards the change and audits it under
the key's name. A failed call raises the ServiceError the registry raised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmserve.common.errors import ServiceError, from_grpc_error
from llmserve.v1 import registry_pb2, registry_pb2_grpc

# Changes can wait on Redis; a publish streams for as long as copying takes.
CALL_TIMEOUT_S = 30.0
# ServiceError.reason of a publish the registry cannot convert (no torch beside it): the publisher
# converts on its side and publishes the directory.
CANNOT_CONVERT = "cannot_convert"


class RegistryClient:
    def __init__(self, addr: str, authorization: str = "") -> None:
        self.addr = addr
        self._authorization = authorization
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryStub | None = None

    @property
    def stub(self) -> registry_pb2_grpc.RegistryStub:
        # Opened on first use, inside the event loop that makes the calls (a grpc.aio channel belongs to one).
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.addr)
            self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        return self._stub

    @classmethod
    def with_key(cls, addr: str, api_key: str) -> RegistryClient:
        return cls(addr, f"Bearer {api_key}" if api_key else "")

    def _metadata(self, authorization: str | None) -> tuple[tuple[str, str], ...]:
        value = authorization if authorization is not None else self._authorization
        return (("authorization", value),) if value else ()

    async def call(self, method: str, request: Any, authorization: str | None = None, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """`stub.<method>(request)`; `authorization` (a whole header value) overrides the client's own."""
        try:
            return await getattr(self.stub, method)(request, metadata=self._metadata(authorization), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.addr) from None

    async def publish(self, request: registry_pb2.PublishRequest, timeout_s: float | None = None) -> AsyncIterator[registry_pb2.PublishProgress]:
        try:
            async for update in self.stub.PublishStream(request, metadata=self._metadata(None), timeout=timeout_s):
                yield update
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.addr) from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _error(exc: grpc.aio.AioRpcError, addr: str) -> ServiceError:
    error = from_grpc_error(exc)
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "").lower():
        error.message = f"the registry at {addr} is unreachable (LLMSERVE_REGISTRY_ADDR): {exc.details()}"
    return error

"""One error type that crosses service boundaries, and its mapping to gRPC and HTTP."""

from __future__ import annotations

import math

import grpc

from llmserve.v1 import events_pb2

_GRPC = {
    events_pb2.ERROR_CODE_INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    events_pb2.ERROR_CODE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    events_pb2.ERROR_CODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    events_pb2.ERROR_CODE_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    events_pb2.ERROR_CODE_INTERNAL: grpc.StatusCode.INTERNAL,
    events_pb2.ERROR_CODE_FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    events_pb2.ERROR_CODE_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    events_pb2.ERROR_CODE_UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}

_HTTP = {
    events_pb2.ERROR_CODE_INVALID_ARGUMENT: 400,
    events_pb2.ERROR_CODE_NOT_FOUND: 404,
    events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: 429,
    events_pb2.ERROR_CODE_UNAVAILABLE: 503,
    events_pb2.ERROR_CODE_DEADLINE_EXCEEDED: 504,
    events_pb2.ERROR_CODE_INTERNAL: 500,
    events_pb2.ERROR_CODE_FAILED_PRECONDITION: 409,
    events_pb2.ERROR_CODE_PERMISSION_DENIED: 403,
    events_pb2.ERROR_CODE_UNAUTHENTICATED: 401,
}


class ServiceError(Exception):
    """A failure with a status a client can act on. Raised anywhere; turned into a status in one place."""

    def __init__(
        self, code: int, message: str, retry_after_s: float | None = None, param: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        # The request field at fault, for clients that show it (OpenAI's "param").
        self.param = param
        # Finer than the code, for metrics and logs: "queue_full", "tenant_limit", ...
        self.reason = reason or self.code_name

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return _GRPC.get(self.code, grpc.StatusCode.INTERNAL)

    @property
    def code_name(self) -> str:
        """The code as clients and metrics spell it: "invalid_argument", "resource_exhausted", ..."""
        return events_pb2.ErrorCode.Name(self.code).removeprefix("ERROR_CODE_").lower()

    @property
    def retry_after_whole_s(self) -> int | None:
        """retry_after_s in whole seconds, rounded up (at least 1), as REST's Retry-After and gRPC's
        retry-after trailer carry it: a client that waits this long is not refused again for the same reason."""
        return None if self.retry_after_s is None else max(1, math.ceil(self.retry_after_s))

    @property
    def http_status(self) -> int:
        return _HTTP.get(self.code, 500)

    @classmethod
    def invalid(cls, message: str, param: str | None = None) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_INVALID_ARGUMENT, message, param=param)

    @classmethod
    def not_found(cls, message: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_NOT_FOUND, message)

    @classmethod
    def exhausted(cls, message: str, retry_after_s: float, reason: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED, message, retry_after_s=retry_after_s, reason=reason)

    @classmethod
    def unavailable(cls, message: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_UNAVAILABLE, message)

    @classmethod
    def deadline(cls, message: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_DEADLINE_EXCEEDED, message)

    @classmethod
    def unauthenticated(cls, message: str, reason: str = "invalid_api_key") -> ServiceError:
        return cls(events_pb2.ERROR_CODE_UNAUTHENTICATED, message, reason=reason)

    @classmethod
    def denied(cls, message: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_PERMISSION_DENIED, message)

    @classmethod
    def internal(cls, message: str) -> ServiceError:
        return cls(events_pb2.ERROR_CODE_INTERNAL, message)

    def __repr__(self) -> str:
        return f"ServiceError({events_pb2.ErrorCode.Name(self.code)}, {self.message!r})"


def from_grpc_error(exc: grpc.aio.AioRpcError) -> ServiceError:
    """A failed call to another llmserve service, as the ServiceError it was raised as there."""
    code = next((c for c, status in _GRPC.items() if status == exc.code()), events_pb2.ERROR_CODE_INTERNAL)
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        code = events_pb2.ERROR_CODE_UNAVAILABLE
    trailers = dict(exc.trailing_metadata() or ())
    retry = float(trailers["retry-after"]) if "retry-after" in trailers else None
    return ServiceError(code, exc.details() or exc.code().name.lower(), retry_after_s=retry, reason=trailers.get("llmserve-reason"))


def dependency_error(exc: BaseException) -> ServiceError | None:
    """UNAVAILABLE for a call that failed because Redis or NATS cannot be reached now (the caller may
    retry; the service says so on its readiness probe), None for anything else."""
    import nats.errors
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return ServiceError.unavailable(f"the registry's Redis is unreachable: {exc}")
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.NoServersError | nats.errors.ConnectionReconnectingError):
        return ServiceError.unavailable("NATS is unreachable")
    return None

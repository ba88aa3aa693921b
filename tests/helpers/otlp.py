"""A real OTLP/gRPC trace receiver for tests: services export to it as they would to a collector."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from llmserve.cli import infra


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    instance: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    events: tuple[str, ...]
    attributes: dict
    error: bool


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.port = infra.free_port()
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=1)

    def Export(self, request, context):  # noqa: N802 (the OTLP service's method name)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            events=tuple(e.name for e in span.events),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        with self._changed:
            self._spans.extend(received)
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self._spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, enough, timeout_s: float) -> list[ReceivedSpan]:
        """The trace's spans once enough(spans) holds; AssertionError with what arrived after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                spans = [s for s in self._spans if s.trace_id == trace_id]
                if enough(spans):
                    return spans
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"trace {trace_id} incomplete after {timeout_s} s: {[(s.service, s.name) for s in spans]}")
                self._changed.wait(remaining)

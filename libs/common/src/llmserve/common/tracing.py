"""OpenTelemetry traces: one request's spans across router, scheduler and worker, off by default.

Tracing is on when the standard variable OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names an OTLP/gRPC collector; the SDK then reads the other
standard OTEL_* variables (sampler, batch delays, headers, service name). When it is off, the
OpenTelemetry API's no-op tracer answers every call, so the request path pays almost nothing, and an
incoming `traceparent` is still passed on unchanged.

The context travels in W3C `traceparent`/`tracestate` headers: from the client (REST headers, gRPC
metadata) to the router, in the NATS headers of a submission to the scheduler, and in the JetStream
headers of the queued job to the worker. Spans are started and ended explicitly rather than made
current, because a request's span outlives many awaits and yields of an async generator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

log = structlog.get_logger()

TRACER_NAME = "llmserve"
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

__all__ = ["Span", "SpanKind", "configure", "end_span", "extract", "headers_for", "start_span", "tracer"]


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)


def configure(service: str, instance_id: str = "", environ: Mapping[str, str] = os.environ) -> Callable[[], None]:
    """Installs a tracer provider exporting over OTLP when an endpoint is configured; returns the
    function that flushes and stops it at exit (a no-op when tracing is off)."""
    if not enabled(environ):
        return lambda: None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.name": environ.get("OTEL_SERVICE_NAME") or f"llmserve-{service}", "service.namespace": "llmserve"}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    endpoint = next(environ[name] for name in _ENDPOINT_VARIABLES if environ.get(name))
    log.info("tracing_on", exporter="otlp", endpoint=endpoint)
    return provider.shutdown


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def extract(carrier: Mapping[str, str] | Iterable[tuple[str, str | bytes]] | None) -> Context | None:
    """The trace context in incoming headers or gRPC metadata, None when they carry none."""
    if not carrier:
        return None
    if not isinstance(carrier, Mapping):
        carrier = {k.lower(): v if isinstance(v, str) else v.decode(errors="replace") for k, v in carrier}
    context = propagate.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def start_span(name: str, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes) -> Span:
    """A started span, child of `parent` (a root when None); the caller ends it (end_span)."""
    return tracer().start_span(name, context=parent, kind=kind, attributes={k: v for k, v in attributes.items() if v is not None})


def headers_for(span: Span, headers: dict[str, str] | None = None) -> dict[str, str]:
    """`headers` (a new dict when None) with the span's context added as traceparent/tracestate."""
    headers = {} if headers is None else headers
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers


def end_span(span: Span, error: str | None = None, end_time_ns: int | None = None) -> None:
    """Ends the span; with `error`, marks it failed with that description."""
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_time_ns)

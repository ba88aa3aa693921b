"""The trace context's path through NATS: router's submission → scheduler's span → the queued job's headers.

Spans are recorded by the SDK's in-memory exporter in this process; the scheduler and the puller run
in-process over a real NATS with JetStream.
"""

import contextlib

import pytest
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmserve.common import tracing
from llmserve.common.job_client import JobClient
from llmserve.v1 import events_pb2
from tests.integration.test_job_queue import job, live_worker, make_scheduler

pytestmark = pytest.mark.integration

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans():
    # The global provider can be set once per process: later tests reuse it.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
async def running_scheduler(nc, subjects, catalog, redis_client, keys):
    sched, liveness = make_scheduler(nc, subjects, catalog, redis_client, keys)
    await catalog.publish("m", "m/a", "a" * 64, "test")
    await live_worker(liveness)
    await sched.start()
    yield sched
    await sched.stop()
    with contextlib.suppress(NotFoundError):  # made by the first job queued
        await nc.jetstream().delete_stream(subjects.jobs_stream("m"))


async def test_a_job_carries_its_trace_from_the_router_through_the_scheduler_to_the_worker(spans, nc, subjects, running_scheduler):
    from llmserve.model_worker.job_puller import JobPuller

    client_context = tracing.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    router_span = tracing.start_span("router.generate", client_context, tracing.SpanKind.SERVER)
    jobs = JobClient(nc, subjects, submit_timeout_s=5)
    await jobs.submit(job("traced").SerializeToString(), tracing.headers_for(router_span))
    tracing.end_span(router_span)

    puller = JobPuller(nc, subjects, "m", 1)
    await puller.start()
    try:
        (msg,) = await puller.pull(1)
        await msg.ack()
    finally:
        await puller.stop()
    assert events_pb2.Job.FromString(msg.data).request_id == "traced"
    worker_span = tracing.start_span("worker.generate", tracing.extract(msg.headers), tracing.SpanKind.CONSUMER)
    tracing.end_span(worker_span)

    by_name = {s.name: s for s in spans.get_finished_spans()}
    router, scheduler, worker = by_name["router.generate"], by_name["scheduler.admit"], by_name["worker.generate"]
    assert {s.context.trace_id for s in (router, scheduler, worker)} == {0x0AF7651916CD43DD8448EB211C80319C}
    assert router.parent.span_id == 0xB7AD6B7169203331
    assert scheduler.parent.span_id == router.context.span_id
    assert worker.parent.span_id == scheduler.context.span_id
    assert scheduler.attributes["llmserve.outcome"] == "queued"
    assert scheduler.attributes["llmserve.version"] == 1


async def test_a_refused_submission_ends_its_span_as_an_error(spans, nc, subjects, running_scheduler):
    parent = tracing.start_span("router.generate")
    reply = await running_scheduler.submit(job("nowhere", model="absent").SerializeToString(), tracing.extract(tracing.headers_for(parent)))
    tracing.end_span(parent)
    assert reply.error_code == events_pb2.ERROR_CODE_NOT_FOUND
    (admit,) = [s for s in spans.get_finished_spans() if s.name == "scheduler.admit"]
    assert admit.parent.span_id == parent.get_span_context().span_id
    assert admit.status.status_code == trace.StatusCode.ERROR and "absent" in admit.status.description


def test_without_an_incoming_traceparent_there_is_no_parent():
    assert tracing.extract({}) is None
    assert tracing.extract({"traceparent": "not a trace"}) is None
    assert tracing.extract([("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]) is not None


def test_tracing_is_off_unless_an_otlp_endpoint_is_set():
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"})

"""Traces across processes: every service exports over OTLP to a real receiver, and one request is one trace."""

import asyncio
import os
import signal
import uuid

import grpc
import httpx
import nats
import pytest

from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc
from tests.e2e.test_failover import pid_of
from tests.helpers.cluster import Cluster
from tests.helpers.otlp import OtlpReceiver
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory, receiver):
    prefix = "tr" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("tracing-logs"))
    # Exported every 100 ms, so a test waits for spans no longer than that.
    c.extra_env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    try:
        c.start(workers=2, LLMSERVE_WORKER_DRAIN_GRACE_S="0.3")
        c.wait_workers(2)
        yield c
    finally:
        c.stop()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans, name):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_a_rest_request_is_one_trace_across_router_scheduler_and_worker(cluster, receiver):
    header, trace_id, client_span = traceparent()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    response = httpx.post(f"{cluster.http_url}/v1/chat/completions", json=body, headers={"traceparent": header}, timeout=60)
    assert response.status_code == 200

    names = {"router.generate", "scheduler.admit", "worker.generate"}
    spans = receiver.wait_for(trace_id, lambda got: names <= {s.name for s in got}, timeout_s=20)
    router, scheduler, worker = one(spans, "router.generate"), one(spans, "scheduler.admit"), one(spans, "worker.generate")
    assert (router.service, scheduler.service, worker.service) == ("llmserve-router", "llmserve-scheduler", "llmserve-worker")
    # One connected chain: client → router → scheduler → worker.
    assert router.parent_span_id == client_span
    assert scheduler.parent_span_id == router.span_id
    assert worker.parent_span_id == scheduler.span_id
    assert {"queued", "first_token"} <= set(router.events)
    assert list(worker.events) == ["dequeued", "prefill_done", "decode_done"]
    assert router.attributes["llmserve.api"] == "rest" and router.attributes["llmserve.outcome"] == "ok"
    assert worker.attributes["llmserve.finish_reason"] == "FINISH_REASON_LENGTH"
    assert not any(s.error for s in spans)


async def test_a_migrated_request_stays_one_trace_with_both_workers_in_it(cluster, receiver):
    """Last in this module: it drains a worker. The drained worker hands the request back; the router
    resumes it on the other worker, and both workers' spans hang under the same router span."""
    header, trace_id, client_span = traceparent()
    rid = f"traced-{uuid.uuid4().hex[:6]}"
    nc = await nats.connect(cluster.nats_url)
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_chunk(msg):
        chunk = events_pb2.TokenChunk.FromString(msg.data)
        if chunk.request_id == rid and chunk.seq >= 3 and not started.done():
            started.set_result(chunk.worker_id)

    await nc.subscribe(f"{cluster.prefix}.tokens.*", cb=on_chunk)
    await nc.flush()
    request = inference_pb2.GenerateRequest(
        request_id=rid,
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="Tell me about rivers.")]),
        sampling=common_pb2.SamplingParams(max_tokens=120, ignore_eos=True),
    )
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        call = inference_pb2_grpc.InferenceStub(channel).GenerateStream(request, metadata=(("traceparent", header),), timeout=180)

        async def read() -> list:
            return [r async for r in call]

        reading = asyncio.create_task(read())
        victim = await asyncio.wait_for(started, 60)
        os.kill(pid_of(victim), signal.SIGTERM)
        responses = await asyncio.wait_for(reading, 180)
    await nc.close()
    assert responses[-1].usage.completion_tokens == 120
    assert [r.index for r in responses] == list(range(len(responses)))

    def complete(got) -> bool:
        return len([s for s in got if s.name == "worker.generate"]) == 2 and any(s.name == "router.generate" for s in got)

    spans = receiver.wait_for(trace_id, complete, timeout_s=30)
    router = one(spans, "router.generate")
    assert router.parent_span_id == client_span
    assert "migration" in router.events and router.attributes["llmserve.migrations"] == 1
    admits = {s.span_id: s for s in spans if s.name == "scheduler.admit"}
    assert sorted(s.attributes["llmserve.attempt"] for s in admits.values()) == [0, 1]
    assert all(s.parent_span_id == router.span_id for s in admits.values())
    workers = [s for s in spans if s.name == "worker.generate"]
    assert all(w.parent_span_id in admits for w in workers)
    assert len({w.instance for w in workers}) == 2
    first, second = sorted(workers, key=lambda w: w.attributes["llmserve.attempt"])
    assert first.instance == victim and "handed_back" in first.events
    assert second.instance != victim and "decode_done" in second.events
    cluster.forget_stopped()

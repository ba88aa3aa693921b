"""Scheduling under load, end to end: priorities, bounded queues, deadlines, crashes, duplicates, tenants.

Two schedulers share the work (a NATS queue group), so every bound asserted here holds across them.

One worker with a single slot serves the real model. A "blocker" (a long generation) holds that slot
while a test fills the queue, so what is queued and in which order is exact, then the blocker is
cancelled and the queue drains. Which job a worker took, and when, is read from the token subjects:
every job a worker takes starts with a seq-0 "taken" chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid

import grpc
import httpx
import nats
import pytest
import redis.asyncio as aioredis

from llmserve.cli import infra
from llmserve.common.keys import RedisKeys
from llmserve.common.registry_client import RegistryClient
from llmserve.common.subjects import Subjects
from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc, registry_pb2
from tests.helpers.cluster import Cluster
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

QUEUE_CAPACITY = 50
SECOND_SCHEDULER_METRICS_PORT = infra.free_port()
STEADY = 6
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    prefix = "s" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("scheduling-logs"))
    c.extra_env.update(
        LLMSERVE_SCHEDULER_MAX_QUEUED=str(QUEUE_CAPACITY),
        LLMSERVE_SCHEDULER_TENANT_MAX_ACTIVE="0",
        # Long enough that no job ages a level within a test: the order asserted is the strict one.
        LLMSERVE_WORKER_PRIORITY_AGING_S="60",
    )
    try:
        c.start(workers=1, LLMSERVE_WORKER_MAX_RUNNING="1")
        # A second scheduler in the queue group: every test here runs with two sharing the queues.
        c.start_service("scheduler", "scheduler-2", LLMSERVE_SCHEDULER_METRICS_ADDR=f"127.0.0.1:{SECOND_SCHEDULER_METRICS_PORT}")
        yield c
    finally:
        c.stop()


def gen_request(rid: str, priority: int = common_pb2.PRIORITY_NORMAL, max_tokens: int = 2) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        request_id=rid, prompt="Once upon a time", priority=priority, sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    )


class Observer:
    """Watches the token subjects: which request a worker took, in what order, and which finished."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.taken: list[str] = []
        self.took = asyncio.Condition()
        self.finals: dict[str, list[events_pb2.TokenChunk]] = {}
        self.nc = None
        self.js = None

    async def __aenter__(self) -> Observer:
        self.nc = await nats.connect(self.cluster.nats_url)
        self.js = self.nc.jetstream()

        async def on_chunk(msg) -> None:
            chunk = events_pb2.TokenChunk.FromString(msg.data)
            if chunk.seq == 0 and not chunk.final:
                self.taken.append(chunk.request_id)
                async with self.took:
                    self.took.notify_all()
            if chunk.final:
                self.finals.setdefault(chunk.request_id, []).append(chunk)

        await self.nc.subscribe(f"{self.cluster.prefix}.tokens.*", cb=on_chunk)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def wait_taken(self, rid: str, timeout_s: float = 10.0) -> None:
        """Waits until this observer saw the worker take `rid`: its own subscription may hear the
        "taken" chunk after the router already relayed the first piece to the client."""
        async with self.took:
            await asyncio.wait_for(self.took.wait_for(lambda: rid in self.taken), timeout_s)

    async def queued(self) -> int:
        try:
            return (await self.js.stream_info(Subjects(self.cluster.prefix).jobs_stream(MODEL))).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    async def wait_queued(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (n := await self.queued()) != count:
            assert time.monotonic() < deadline, f"{n} jobs queued, expected {count}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def blocker(stub: inference_pb2_grpc.InferenceStub, observer: Observer):
    """Holds the worker's only slot with a long generation until the block ends."""
    rid = "blocker-" + uuid.uuid4().hex[:6]
    call = stub.GenerateStream(gen_request(rid, max_tokens=4000), timeout=300)
    first = await call.read()  # the worker is generating: the slot is busy
    assert first.text or first.index == 0
    await observer.wait_taken(rid)
    try:
        yield
    finally:
        call.cancel()


async def run_to_end(stub, request, timeout=120, metadata=None) -> str:
    return "".join([r.text async for r in stub.GenerateStream(request, timeout=timeout, metadata=metadata)])


async def test_high_priority_jobs_start_before_every_waiting_low_one(cluster):
    async with Observer(cluster) as obs, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with blocker(stub, obs):
            low = [asyncio.create_task(run_to_end(stub, gen_request(f"low-{i}", common_pb2.PRIORITY_LOW))) for i in range(20)]
            await obs.wait_queued(20)
            high = [asyncio.create_task(run_to_end(stub, gen_request(f"high-{i}", common_pb2.PRIORITY_HIGH))) for i in range(5)]
            await obs.wait_queued(25)
        results = await asyncio.wait_for(asyncio.gather(*low, *high), 120)
    assert all(results), "every job completes with text"
    order = [rid for rid in obs.taken if rid.startswith(("low-", "high-"))]
    assert len(order) == 25
    assert {rid for rid in order[:5]} == {f"high-{i}" for i in range(5)}, order


async def test_a_full_queue_rejects_exactly_the_excess_with_429(cluster):
    extra = 4
    async with Observer(cluster) as obs, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with httpx.AsyncClient(base_url=cluster.http_url, timeout=120, limits=httpx.Limits(max_connections=200)) as http:

            async def post(i: int) -> httpx.Response:
                return await http.post(
                    "/v1/completions", json={"model": MODEL, "prompt": f"Count to {i}", "max_tokens": 2}
                )

            async with blocker(stub, obs):
                tasks = [asyncio.create_task(post(i)) for i in range(QUEUE_CAPACITY + extra)]
                await obs.wait_queued(QUEUE_CAPACITY)
                # Rejections are immediate: they all arrive while the slot is still busy.
                deadline = time.monotonic() + 30
                while sum(t.done() for t in tasks) < extra:
                    assert time.monotonic() < deadline, "rejections did not come back while the queue was full"
                    await asyncio.sleep(0.05)
                assert await obs.queued() == QUEUE_CAPACITY
                # The schedulers' metrics show the full queue and why they refused.
                assert _scheduler_metric(cluster, "llmserve_scheduler_rejections_total", model=MODEL, reason="queue_full") >= extra
                await asyncio.wait_for(
                    _until(lambda: _scheduler_metric(cluster, "llmserve_scheduler_queue_depth", model=MODEL, priority="2") > 0), 10
                )
            responses = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) == extra, statuses
    assert statuses.count(200) == QUEUE_CAPACITY, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "resource_exhausted"


async def test_a_deadline_passing_in_the_queue_is_answered_on_time_and_never_runs(cluster):
    async with Observer(cluster) as obs, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with httpx.AsyncClient(base_url=cluster.http_url, timeout=30) as http:
            async with blocker(stub, obs):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await run_to_end(stub, gen_request("late-grpc"), timeout=1.0)
                grpc_s = time.monotonic() - started
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

                started = time.monotonic()
                response = await http.post(
                    "/v1/completions",
                    json={"model": MODEL, "prompt": "late", "max_tokens": 2},
                    headers={"x-request-timeout": "1", "x-request-id": "late-rest"},
                )
                rest_s = time.monotonic() - started
                assert response.status_code == 504, response.text
            # A job queued behind the late ones: once it is taken, they were dropped or skipped.
            assert await run_to_end(stub, gen_request("after-late"))
    assert grpc_s <= 1.2 and rest_s <= 1.2, (grpc_s, rest_s)
    assert "after-late" in obs.taken
    assert not {"late-grpc", "late-rest"} & set(obs.taken), obs.taken


async def test_jobs_queued_when_the_scheduler_is_killed_complete_exactly_once(cluster):
    async with Observer(cluster) as obs, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with blocker(stub, obs):
            tasks = [asyncio.create_task(run_to_end(stub, gen_request(f"k-{i}"))) for i in range(50)]
            await obs.wait_queued(50)
            scheduler = next(s for s in cluster.services if s.name == "scheduler")
            os.kill(scheduler.proc.pid, signal.SIGKILL)
            scheduler.proc.wait(10)
            cluster.forget_stopped()
            cluster.start_service("scheduler", LLMSERVE_SCHEDULER_METRICS_ADDR=f"127.0.0.1:{cluster.scheduler_metrics_port}")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 180)
        # The new scheduler takes submissions.
        assert await run_to_end(stub, gen_request("after-restart"), timeout=60)
    assert all(results)
    for i in range(50):
        assert obs.taken.count(f"k-{i}") == 1
        assert len(obs.finals[f"k-{i}"]) == 1


async def test_the_same_request_id_submitted_twice_runs_once(cluster):
    async with Observer(cluster) as obs, grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with blocker(stub, obs):
            first = asyncio.create_task(run_to_end(stub, gen_request("twice", max_tokens=6)))
            await obs.wait_queued(1)
            second = asyncio.create_task(run_to_end(stub, gen_request("twice", max_tokens=6)))
            await asyncio.sleep(0)  # both submitted while the slot is busy
            await asyncio.wait_for(_until(lambda: _submissions(cluster, "duplicate") >= 1), 10)
        texts = await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert texts[0] == texts[1] and texts[0]
    assert obs.taken.count("twice") == 1
    assert len(obs.finals["twice"]) == 1
    # Once the request has ended, its id is known as used: a third submission is told so at once.
    redis = aioredis.from_url(cluster.redis_url)
    try:
        done_key = RedisKeys(f"{cluster.prefix}:").request_done("twice")
        await asyncio.wait_for(_until_async(lambda: redis.exists(done_key)), 10)
    finally:
        await redis.aclose()
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await run_to_end(stub, gen_request("twice", max_tokens=6), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "new id" in err.value.details()


async def test_a_flooding_tenant_cannot_starve_another(cluster):
    limit = 4
    registry = RegistryClient(cluster.registry_addr)
    for tenant in ("flood", "steady"):
        request = registry_pb2.SetTenantLimitsRequest(limits=registry_pb2.TenantLimits(tenant=tenant, max_active=limit))
        await registry.call("SetTenantLimits", request)
    await registry.close()
    done = asyncio.Event()
    flood_ok = flood_rejected = 0
    steady_times: list[float] = []
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def flooder(n: int) -> None:
            nonlocal flood_ok, flood_rejected
            i = 0
            while not done.is_set():
                i += 1
                try:
                    await run_to_end(stub, gen_request(f"flood-{n}-{i}", max_tokens=4), metadata=(("x-tenant", "flood"),))
                    flood_ok += 1
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    flood_rejected += 1
                    await asyncio.sleep(0.1)  # a client that ignores Retry-After

        flooders = [asyncio.create_task(flooder(n)) for n in range(12)]
        await asyncio.wait_for(_until(lambda: flood_rejected > 0), 60)
        flood_before = flood_ok
        for i in range(STEADY):
            started = time.monotonic()
            assert await run_to_end(stub, gen_request(f"steady-{i}", max_tokens=4), timeout=60, metadata=(("x-tenant", "steady"),))
            steady_times.append(time.monotonic() - started)
        flood_during = flood_ok - flood_before
        done.set()
        await asyncio.wait_for(asyncio.gather(*flooders), 120)
    # One slot; the flood holds at most `limit` jobs in the system, so each steady request waits
    # behind at most that many: steady gets at least 1 / (limit + 1) of the completions (with
    # one job of slack for the flood's job running when steady's request arrives).
    print(f"steady {STEADY} vs flood {flood_during} completions; steady latencies {steady_times}")
    assert STEADY / (STEADY + flood_during) >= 1 / (limit + 2), (flood_during, steady_times)


async def _until_async(predicate, interval_s: float = 0.05) -> None:
    while not await predicate():
        await asyncio.sleep(interval_s)


async def _until(predicate, interval_s: float = 0.05) -> None:
    while not predicate():
        await asyncio.sleep(interval_s)


def _scheduler_metric(cluster: Cluster, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels over both schedulers."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for port in (cluster.scheduler_metrics_port, SECOND_SCHEDULER_METRICS_PORT):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
    return total


def _submissions(cluster: Cluster, outcome: str) -> float:
    return _scheduler_metric(cluster, "llmserve_scheduler_submissions_total", outcome=outcome)

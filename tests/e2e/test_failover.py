"""Workers die or drain mid-stream; their requests continue on another worker and clients notice nothing."""

import asyncio
import os
import signal
import uuid

import grpc
import nats
import pytest

from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc
from tests.helpers.cluster import Cluster
from tests.helpers.registry import register

pytestmark = pytest.mark.e2e

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Explain gravity in one sentence.",
    "Why is the sky blue?",
    "What is a prime number?",
    "Who wrote Hamlet?",
    "Describe a sunset.",
    "What does a CPU do?",
]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    prefix = "f" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    c = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path_factory.mktemp("failover-logs"))
    try:
        c.start(workers=2, LLMSERVE_WORKER_DRAIN_GRACE_S="0.5")
        c.wait_workers(2)
        yield c
    finally:
        c.stop()


def request(question: str, rid: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        request_id=rid,
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=question)]),
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True),
    )


class Streams:
    """Eight concurrent greedy streams, recording what the clients get and what travels on NATS."""

    def __init__(self, cluster: Cluster, tag: str) -> None:
        self.cluster = cluster
        self.rids = [f"{tag}-{i}" for i in range(len(QUESTIONS))]
        self.chunks: dict[str, list[events_pb2.TokenChunk]] = {rid: [] for rid in self.rids}
        self.texts: dict[str, str] = {}
        self.indexes: dict[str, list[int]] = {}
        self.progress = asyncio.Event()

    async def run(self, after_start=None) -> None:
        nc = await nats.connect(self.cluster.nats_url)

        async def on_chunk(msg):
            chunk = events_pb2.TokenChunk.FromString(msg.data)
            self.chunks[chunk.request_id].append(chunk)
            if all(sum(len(c.token_ids) for c in cs) >= 3 for cs in self.chunks.values()):
                self.progress.set()

        await nc.subscribe(f"{self.cluster.prefix}.tokens.*", cb=on_chunk)
        await nc.flush()
        async with grpc.aio.insecure_channel(self.cluster.grpc_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)

            async def one(question: str, rid: str) -> None:
                responses = [r async for r in stub.GenerateStream(request(question, rid), timeout=180)]
                self.texts[rid] = "".join(r.text for r in responses)
                self.indexes[rid] = [r.index for r in responses]
                assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
                assert responses[-1].usage.completion_tokens == MAX_TOKENS

            tasks = [asyncio.create_task(one(q, rid)) for q, rid in zip(QUESTIONS, self.rids, strict=True)]
            if after_start is not None:
                await asyncio.wait_for(self.progress.wait(), 120)
                await after_start(self)
            await asyncio.wait_for(asyncio.gather(*tasks), 240)
        await nc.close()

    def worker_of(self, rid: str) -> str:
        return next(c.worker_id for c in self.chunks[rid] if c.worker_id)

    def check_contiguous(self) -> None:
        for rid in self.rids:
            assert self.indexes[rid] == list(range(len(self.indexes[rid])))
            by_attempt: dict[int, list[int]] = {}
            for chunk in self.chunks[rid]:
                by_attempt.setdefault(chunk.attempt, []).append(chunk.seq)
            for seqs in by_attempt.values():
                assert seqs == list(range(len(seqs))), f"{rid}: seq {seqs}"


def pid_of(worker_id: str) -> int:
    # Instance ids are worker-<host>-<pid>-<random>.
    return int(worker_id.rsplit("-", 2)[-2])


async def test_kill_9_mid_stream_loses_nothing(cluster):
    undisturbed = Streams(cluster, "calm")
    await undisturbed.run()

    async def kill_busiest(streams: Streams) -> None:
        os.kill(pid_of(streams.worker_of(streams.rids[0])), signal.SIGKILL)

    disturbed = Streams(cluster, "kill")
    await disturbed.run(after_start=kill_busiest)
    moved = [rid for rid in disturbed.rids if any(c.attempt > 0 for c in disturbed.chunks[rid])]
    assert disturbed.rids[0] in moved
    for calm_rid, rid in zip(undisturbed.rids, disturbed.rids, strict=True):
        assert disturbed.texts[rid] == undisturbed.texts[calm_rid], rid
    disturbed.check_contiguous()
    cluster.forget_stopped()


async def test_sigterm_hands_requests_over_without_client_errors(cluster):
    cluster.start_service("model_worker", "worker-late", LLMSERVE_WORKER_DRAIN_GRACE_S="0.5")
    cluster.wait_workers(2)

    async def drain_busiest(streams: Streams) -> None:
        streams.victim_pid = pid_of(streams.worker_of(streams.rids[0]))
        os.kill(streams.victim_pid, signal.SIGTERM)

    streams = Streams(cluster, "drain")
    await streams.run(after_start=drain_busiest)
    assert len(streams.texts) == len(QUESTIONS)
    assert any(c.handed_back for cs in streams.chunks.values() for c in cs)
    streams.check_contiguous()
    # The drained worker exits cleanly once it has handed everything back.
    drained = next(s for s in cluster.services if s.proc is not None and s.proc.pid == streams.victim_pid)
    assert drained.proc.wait(30) == 0
    cluster.forget_stopped()


async def test_sigstop_is_declared_dead_within_3s_and_late_tokens_never_reach_clients(cluster):
    cluster.start_service("model_worker", "worker-spare", LLMSERVE_WORKER_DRAIN_GRACE_S="0.5")
    cluster.wait_workers(2)
    reference = Streams(cluster, "ref")
    await reference.run()

    nc = await nats.connect(cluster.nats_url)
    dead: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def on_dead(msg):
        event = events_pb2.InstanceEvent.FromString(msg.data)
        assert event.instance_state == events_pb2.INSTANCE_STATE_DEAD
        dead[event.instance_id] = loop.time()

    await nc.subscribe(f"{cluster.prefix}.events.instance.dead", cb=on_dead)
    await nc.flush()
    stopped: dict[str, float] = {}

    async def freeze_busiest(streams: Streams) -> None:
        victim = streams.worker_of(streams.rids[0])
        os.kill(pid_of(victim), signal.SIGSTOP)
        stopped[victim] = loop.time()

    streams = Streams(cluster, "frozen")
    try:
        await streams.run(after_start=freeze_busiest)
    finally:
        for victim in stopped:
            os.kill(pid_of(victim), signal.SIGCONT)
    (victim, at), = stopped.items()
    assert victim in dead and dead[victim] - at <= 3.0, f"declared dead after {dead.get(victim, float('inf')) - at:.2f} s"
    # The thawed worker may still publish a few tokens of its old attempt: clients never see them.
    await asyncio.sleep(1.0)
    await nc.close()
    for ref_rid, rid in zip(reference.rids, streams.rids, strict=True):
        assert streams.texts[rid] == reference.texts[ref_rid], rid
    streams.check_contiguous()


async def test_sigterm_on_the_router_finishes_open_streams_and_refuses_new_calls(cluster):
    """Last in this module: it stops the router."""
    router = next(s for s in cluster.services if s.name == "router")
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.GenerateStream(request(QUESTIONS[0], "router-drain-1"), timeout=120)
        first = await anext(call.__aiter__())
        router.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # The open stream goes on to its last token...
        rest = [r async for r in call]
        assert (rest or [first])[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert (rest or [first])[-1].usage.completion_tokens == MAX_TOKENS
        # ...while a new call is refused.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(request(QUESTIONS[1], "router-drain-2"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert router.proc.wait(40) == 0
    cluster.forget_stopped()

"""NATS restarts under load: services reconnect, every accepted request completes or fails explicitly, nothing hangs."""

import asyncio
import time
import uuid

import grpc
import pytest

from llmserve.cli import infra
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.helpers.cluster import Cluster
from tests.helpers.registry import register
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.e2e

DEADLINE_S = 90


def request(question: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=question)]),
        sampling=common_pb2.SamplingParams(max_tokens=48, ignore_eos=True),
    )


@pytest.fixture
def own_nats_cluster(redis_srv, model_store, smollm, tmp_path):
    # A NATS of this test's own: restarting the shared one would disturb other tests' clusters.
    nats_srv = ServerProcess("nats", f"nats://127.0.0.1:{infra.free_port()}", tmp_path / "nats")
    nats_srv.start()
    prefix = "n" + uuid.uuid4().hex[:10]
    register(redis_srv.url, prefix, smollm)
    cluster = Cluster(nats_srv.url, redis_srv.url, prefix, model_store, tmp_path / "logs")
    cluster.extra_env["LLMSERVE_ROUTER_STALL_TIMEOUT_S"] = "4"
    try:
        yield nats_srv, cluster.start()
    finally:
        cluster.stop()
        nats_srv.stop()


async def test_nats_restart_mid_stream(own_nats_cluster):
    nats_srv, cluster = own_nats_cluster
    outcomes: list[str] = []
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        first_tokens = asyncio.Event()

        async def one(i: int) -> None:
            try:
                text = ""
                async for r in stub.GenerateStream(request(f"Tell me about the number {i}."), timeout=DEADLINE_S):
                    text += r.text
                    first_tokens.set()
                    if r.finish_reason:
                        assert r.usage.completion_tokens == 48
                outcomes.append("ok")
            except grpc.aio.AioRpcError as exc:
                # An explicit error is acceptable; a hang or an INTERNAL is not.
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "a stream hung until its deadline"
                outcomes.append(exc.code().name)

        started = time.monotonic()
        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await asyncio.wait_for(first_tokens.wait(), 60)
        nats_srv.stop()
        await asyncio.sleep(1.0)
        nats_srv.start()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S + 10)
        assert len(outcomes) == 4 and time.monotonic() - started < DEADLINE_S
        assert outcomes.count("ok") >= 1, outcomes

        # Every service reconnected: a new request is served end to end.
        cluster.wait_workers(1)
        text = "".join([r.text async for r in stub.GenerateStream(request("What is 2+2?"), timeout=60)])
        assert text

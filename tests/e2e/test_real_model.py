"""The whole request path with the real model: router -> scheduler -> JetStream -> worker -> router."""

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import nats
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmserve.v1 import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"


def chat_request(question: str = QUESTION, **sampling) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=question)]),
        sampling=common_pb2.SamplingParams(**{"max_tokens": 32, **sampling}),
    )


@pytest.fixture
def stub(real_cluster):
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def test_stream_answers_paris(stub):
    responses = list(stub.GenerateStream(chat_request(), timeout=60))
    text = "".join(r.text for r in responses)
    assert "Paris" in text
    assert [r.index for r in responses] == list(range(len(responses)))
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert all(r.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    usage = responses[-1].usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len({r.request_id for r in responses}) == 1


def test_unary_generate_answers_paris(stub):
    response = stub.Generate(chat_request(), timeout=60)
    assert "Paris" in response.text
    assert response.model == "SmolLM2-135M-Instruct" and response.model_version == 1


def test_max_tokens_ends_with_length(stub):
    response = stub.Generate(chat_request("Tell me a long story about a dragon.", max_tokens=5), timeout=60)
    assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 5


def test_list_models(stub):
    models = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10).models
    assert [(m.name, m.stable_version, m.live_workers) for m in models] == [("SmolLM2-135M-Instruct", 1, 1)]


async def test_token_chunks_are_contiguous_with_one_final(real_cluster):
    """What travels on NATS: seq 0..n-1 without gaps or repeats, and exactly one final chunk, last."""
    nc = await nats.connect(real_cluster.nats_url)
    chunks: list[events_pb2.TokenChunk] = []
    rid = "order-check-1"

    async def collect(msg):
        chunks.append(events_pb2.TokenChunk.FromString(msg.data))

    await nc.subscribe(f"{real_cluster.prefix}.tokens.{rid}", cb=collect)
    await nc.flush()
    async with grpc.aio.insecure_channel(real_cluster.grpc_addr) as channel:
        request = chat_request(max_tokens=24)
        request.request_id = rid
        responses = [r async for r in inference_pb2_grpc.InferenceStub(channel).GenerateStream(request, timeout=60)]
    await nc.flush()
    await nc.close()
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.text for c in chunks) == "".join(r.text for r in responses)


async def test_client_cancel_stops_generation_on_the_worker(real_cluster):
    nc = await nats.connect(real_cluster.nats_url)
    final = asyncio.get_running_loop().create_future()
    seen = []
    rid = "cancel-check-1"

    async def collect(msg):
        chunk = events_pb2.TokenChunk.FromString(msg.data)
        seen.append(chunk)
        if chunk.final and not final.done():
            final.set_result(chunk)

    await nc.subscribe(f"{real_cluster.prefix}.tokens.{rid}", cb=collect)
    await nc.flush()
    async with grpc.aio.insecure_channel(real_cluster.grpc_addr) as channel:
        request = chat_request("Write a very long essay about the history of Europe.", max_tokens=2000)
        request.request_id = rid
        call = inference_pb2_grpc.InferenceStub(channel).GenerateStream(request, timeout=120)
        received = 0
        async for _ in call:
            received += 1
            if received == 3:
                call.cancel()
                break
    # The worker ends the job with a final "cancelled" chunk within a few decode steps.
    chunk = await asyncio.wait_for(final, 5)
    await nc.close()
    assert chunk.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert chunk.usage.completion_tokens < 100


@pytest.mark.parametrize(
    "request_, code",
    [
        (chat_request(temperature=9.0), grpc.StatusCode.INVALID_ARGUMENT),
        (inference_pb2.GenerateRequest(model="no-such-model", prompt="hi"), grpc.StatusCode.NOT_FOUND),
        (inference_pb2.GenerateRequest(prompt="x" * 2_000_000), grpc.StatusCode.INVALID_ARGUMENT),
        (inference_pb2.GenerateRequest(prompt="hello " * 9000), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["bad-temperature", "unknown-model", "bigger-than-nats-message", "longer-than-context"],
)
def test_bad_requests_get_clear_errors(stub, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(request_, timeout=60))
    assert err.value.code() == code
    assert err.value.details()


def test_health_and_reflection(real_cluster):
    with grpc.insecure_channel(real_cluster.grpc_addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"llmserve.v1.Inference", "grpc.health.v1.Health"} <= names


def test_cli_chat_streams_paris(real_cluster):
    cli = Path(sys.executable).parent / "llmserve"
    out = subprocess.run(
        [str(cli), "chat", QUESTION, "--addr", real_cluster.grpc_addr, "--max-tokens", "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout

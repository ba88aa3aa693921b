"""A "query of death": a request that crashes every worker that runs it. Three workers of two slots,
five ordinary streams (so every worker runs some), then the poison request (a marker only test builds of the worker act on): it kills its first
worker, runs on trial on the next and kills that one too, and is then quarantined: its client gets a
clear error naming the request id, the router logs its hash (not its text) and counts it; the other
requests of both dead workers migrate as usual and end with undisturbed text; the third worker lives."""

import asyncio
import json
import re

import grpc
import httpx
import pytest

from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.helpers.cluster import own_cluster

pytestmark = pytest.mark.e2e

MARKER = "<<crash-this-worker>>"
POISON_TEXT = f"Please summarise this. {MARKER}"
QUESTIONS = [
    "Describe a walk through a forest in autumn.",
    "Explain how a lighthouse works.",
    "Tell me about the history of bread.",
    "Why do cats purr?",
    "What makes a good cup of tea?",
]
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def three_workers(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    with own_cluster(
        nats_srv.url, redis_srv.url, model_store, smollm, tmp_path_factory.mktemp("logs"), workers=3, LLMSERVE_WORKER_TEST_CRASH_MARKER=MARKER,
        LLMSERVE_WORKER_MAX_RUNNING="2",
    ) as cluster:
        yield cluster


def request(rid: str, content: str, max_tokens: int = MAX_TOKENS) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        request_id=rid,
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=content)]),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


async def stream(stub, req, pieces: list, going: asyncio.Event | None = None) -> str:
    async for response in stub.GenerateStream(req, timeout=180):
        pieces.append(response.text)
        if going is not None and len(pieces) >= 3:
            going.set()
    return "".join(pieces)


def quarantined_count(cluster) -> float:
    text = httpx.get(f"{cluster.http_url}/metrics", timeout=5).text
    match = re.search(r'^llmserve_router_quarantined_requests_total\{model="[^"]+"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_request_that_crashes_two_workers_is_quarantined_and_the_others_go_on(three_workers):
    cluster = three_workers
    async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        reference = await asyncio.gather(*(stream(stub, request(f"ref-{i}", q), []) for i, q in enumerate(QUESTIONS)))

        going = [asyncio.Event() for _ in QUESTIONS]
        innocents = [asyncio.create_task(stream(stub, request(f"ok-{i}", q), [], going[i])) for i, q in enumerate(QUESTIONS)]
        await asyncio.wait_for(asyncio.gather(*(g.wait() for g in going)), 60)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream(stub, request("poison-1", POISON_TEXT, max_tokens=16), [])
        texts = await asyncio.wait_for(asyncio.gather(*innocents), 180)

    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "poison-1" in err.value.details() and "quarantined" in err.value.details()
    assert texts == reference
    cluster.forget_stopped()
    alive = [s for s in cluster.services if s.name.startswith("worker-")]
    assert len(alive) == 1, [s.name for s in alive]
    assert quarantined_count(cluster) == 1
    log = [json.loads(line) for line in (cluster.log_dir / "router.log").read_text().splitlines() if line.startswith("{")]
    entries = [e for e in log if e.get("event") == "request_quarantined"]
    assert len(entries) == 1 and entries[0]["request_id"] == "poison-1" and entries[0]["crashes"] == 2
    # Ordinary requests of the dead workers moved on (and were not quarantined).
    moved = {e["request_id"] for e in log if e.get("event") == "request_migrated"} - {"poison-1"}
    assert moved and all(rid.startswith("ok-") for rid in moved), moved
    assert re.fullmatch(r"[0-9a-f]{64}", entries[0]["input_sha256"])
    assert not any(MARKER in line for line in (cluster.log_dir / "router.log").read_text().splitlines())

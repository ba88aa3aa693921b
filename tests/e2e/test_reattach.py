"""A client whose router dies mid-stream re-attaches to its request through another router, by id and
index (gRPC resume_from_index, SSE Last-Event-ID), and gets the rest of the answer: the text equals an
undisturbed run's, with no piece twice and none missing."""

import asyncio
import json
import signal

import grpc
import httpx
import pytest

from llmserve.cli import infra
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.helpers.cluster import own_cluster

pytestmark = pytest.mark.e2e

MAX_TOKENS = 160
GRPC_QUESTION = "Describe a walk through a forest in autumn."
REST_QUESTION = "Explain how a lighthouse works."


@pytest.fixture(scope="module")
def two_routers(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    with own_cluster(nats_srv.url, redis_srv.url, model_store, smollm, tmp_path_factory.mktemp("logs")) as cluster:
        grpc_port, http_port = infra.free_port(), infra.free_port()
        second = cluster.start_service(
            "router", "router-2", LLMSERVE_ROUTER_GRPC_ADDR=f"127.0.0.1:{grpc_port}", LLMSERVE_ROUTER_HTTP_ADDR=f"127.0.0.1:{http_port}"
        )
        cluster.until(lambda: _ready(f"http://127.0.0.1:{http_port}"), 60, "second router not ready")
        yield cluster, second, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def grpc_request(rid: str, resume_from: int | None = None) -> inference_pb2.GenerateRequest:
    request = inference_pb2.GenerateRequest(
        request_id=rid,
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=GRPC_QUESTION)]),
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True),
    )
    if resume_from is not None:
        request.resume_from_index = resume_from
    return request


REST_BODY = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": REST_QUESTION}], "stream": True,
             "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}


async def grpc_stream(addr: str, request, into: list, until: int | None = None, reached: asyncio.Event | None = None) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        async for response in inference_pb2_grpc.InferenceStub(channel).GenerateStream(request, timeout=120):
            into.append((response.index, response.text))
            if reached is not None and len(into) >= until:
                reached.set()


async def sse_stream(url: str, headers: dict, into: list, until: int | None = None, reached: asyncio.Event | None = None) -> None:
    """Appends (event id or None, content) per event; stops at [DONE]."""
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=REST_BODY, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            event_id = None
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    if line == "data: [DONE]":
                        return
                    payload = json.loads(line[6:])
                    assert "error" not in payload, payload
                    delta = payload["choices"][0]["delta"] if payload["choices"] else {}
                    into.append((event_id, delta.get("content") or ""))
                    event_id = None
                    if reached is not None and sum(1 for e, _ in into if e is not None) >= until:
                        reached.set()


def text(pieces: list) -> str:
    return "".join(t for _, t in pieces)


async def test_clients_of_a_killed_router_re_attach_through_another_and_miss_nothing(two_routers):
    cluster, _, grpc2, http2 = two_routers
    # Undisturbed references, through the second router.
    ref_grpc: list = []
    ref_rest: list = []
    await asyncio.gather(grpc_stream(grpc2, grpc_request("ref-g"), ref_grpc), sse_stream(http2, {"x-request-id": "ref-r"}, ref_rest))
    assert [i for i, _ in ref_grpc] == list(range(len(ref_grpc)))
    ids = [e for e, _ in ref_rest if e is not None]
    assert ids == sorted(set(ids))

    # The same two requests through the first router, which is killed after a few pieces.
    got_grpc: list = []
    got_rest: list = []
    grpc_going, rest_going = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(grpc_stream(cluster.grpc_addr, grpc_request("cut-g"), got_grpc, 6, grpc_going)),
        asyncio.create_task(sse_stream(cluster.http_url, {"x-request-id": "cut-r"}, got_rest, 6, rest_going)),
    ]
    await asyncio.wait_for(asyncio.gather(grpc_going.wait(), rest_going.wait()), 60)
    router = next(s for s in cluster.services if s.name == "router")
    router.signal(signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert all(isinstance(r, Exception) for r in results), results  # both streams were cut
    cluster.forget_stopped()
    assert len(got_grpc) < len(ref_grpc)

    # Re-attach through the second router from the first piece each client lacks.
    rest_grpc: list = []
    rest_rest: list = []
    last_id = max(e for e, _ in got_rest if e is not None)
    await asyncio.gather(
        grpc_stream(grpc2, grpc_request("cut-g", resume_from=len(got_grpc)), rest_grpc),
        sse_stream(http2, {"x-request-id": "cut-r", "last-event-id": str(last_id)}, rest_rest),
    )
    whole_grpc = got_grpc + rest_grpc
    assert [i for i, _ in whole_grpc] == list(range(len(whole_grpc)))
    assert text(whole_grpc) == text(ref_grpc)
    rest_ids = [e for e, _ in rest_rest if e is not None]
    assert rest_ids and rest_ids[0] > last_id and rest_ids == sorted(set(rest_ids))
    assert text(got_rest) + text(rest_rest) == text(ref_rest)


async def test_re_attaching_to_an_unknown_or_foreign_request_is_not_found(two_routers):
    _, _, grpc2, http2 = two_routers
    async with grpc.aio.insecure_channel(grpc2) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.GenerateStream(grpc_request("never-started", resume_from=0), timeout=30):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "never-started" in err.value.details()
        # A finished request of tenant "alpha" is not found for tenant "beta".
        request = grpc_request("alpha-1")
        request.sampling.max_tokens = 4
        [r async for r in stub.GenerateStream(request, timeout=60, metadata=(("x-tenant", "alpha"),))]
        again = [r async for r in stub.GenerateStream(grpc_request("alpha-1", 0), timeout=60, metadata=(("x-tenant", "alpha"),))]
        assert [r.index for r in again] == list(range(len(again))) and again[-1].finish_reason
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.GenerateStream(grpc_request("alpha-1", 0), timeout=30, metadata=(("x-tenant", "beta"),)):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with httpx.AsyncClient(timeout=30) as http:
        missing_id = await http.post(f"{http2}/v1/chat/completions", json=REST_BODY, headers={"last-event-id": "3"})
        assert missing_id.status_code == 400 and "X-Request-Id" in missing_id.json()["error"]["message"]
        bad_id = await http.post(f"{http2}/v1/chat/completions", json=REST_BODY, headers={"last-event-id": "x", "x-request-id": "a"})
        assert bad_id.status_code == 400 and "Last-Event-ID" in bad_id.json()["error"]["message"]
        unknown = await http.post(f"{http2}/v1/chat/completions", json=REST_BODY, headers={"last-event-id": "3", "x-request-id": "nope"})
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]

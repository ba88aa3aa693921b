"""Preemption by priority through the whole stack: with every slot of the worker busy with `normal`
streams, a `high` request reaches its first token within its prefill time + 2 decode steps + 100 ms,
and every normal stream, preempted or not, is the same text as an undisturbed run."""

import asyncio
import json
import statistics
import time

import openai
import pytest

from tests.helpers.cluster import own_cluster

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
SLOTS = 4
MAX_PREEMPTIONS = 3
QUESTIONS = ["Write a story about a lighthouse.", "Explain how bread is made.", "Describe a busy market.",
             "List facts about the ocean.", "Tell me about mountains.", "Describe a train journey."]
HIGH = "What is the capital of France?"


@pytest.fixture(scope="module")
def small_cluster(nats_srv, redis_srv, model_store, smollm, tmp_path_factory):
    env = {"LLMSERVE_WORKER_MAX_RUNNING": str(SLOTS), "LLMSERVE_WORKER_MAX_PREEMPTIONS": str(MAX_PREEMPTIONS)}
    with own_cluster(nats_srv.url, redis_srv.url, model_store, smollm, tmp_path_factory.mktemp("logs"), **env) as cluster:
        yield cluster


class Stream:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.arrivals: list[float] = []
        self.text: list[str] = []


async def stream(client: openai.AsyncOpenAI, question: str, priority: str, max_tokens: int, into: Stream) -> str:
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens, stream=True,
        extra_body={"priority": priority, "ignore_eos": True},
    )
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            into.arrivals.append(time.perf_counter())
            into.text.append(chunk.choices[0].delta.content)
    return "".join(into.text)


async def scenario(base_url: str) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    # Undisturbed: the normal streams alone.
    reference = await asyncio.gather(*(stream(client, q, "normal", 64, Stream()) for q in QUESTIONS))
    idle = []
    for _ in range(3):
        s = Stream()
        await stream(client, HIGH, "high", 4, s)
        idle.append(s.arrivals[0] - s.started)
    flood = [Stream() for _ in QUESTIONS]
    tasks = [asyncio.create_task(stream(client, q, "normal", 64, s)) for q, s in zip(QUESTIONS, flood, strict=True)]
    deadline = time.monotonic() + 120
    while sum(1 for s in flood if s.arrivals) < SLOTS:  # every slot busy, two more queued
        assert time.monotonic() < deadline, "the normal streams did not start"
        await asyncio.sleep(0.02)
    window = time.perf_counter()
    highs = []
    for _ in range(3):
        s = Stream()
        await stream(client, HIGH, "high", 4, s)
        highs.append(s.arrivals[0] - s.started)
    window_end = time.perf_counter()
    busy_at_end = sum(1 for t in tasks if not t.done())
    got = await asyncio.wait_for(asyncio.gather(*tasks), 300)
    steps = [b - a for s in flood for a, b in zip(s.arrivals, s.arrivals[1:], strict=False) if window <= a and b <= window_end]
    return {"reference": reference, "got": got, "idle": idle, "highs": highs, "steps": steps, "busy_at_end": busy_at_end}


def test_a_high_request_preempts_normal_work_within_the_bound(small_cluster):
    before = small_cluster.worker_metric("llmserve_worker_preemptions_total")
    result = asyncio.run(scenario(small_cluster.http_url))
    # The normal streams kept every slot busy while the high requests came.
    assert result["busy_at_end"] >= SLOTS
    assert result["got"] == result["reference"]
    assert small_cluster.worker_metric("llmserve_worker_preemptions_total") >= before + 3
    prefill = statistics.median(result["idle"])
    step = statistics.median(result["steps"])
    bound = prefill + 2 * step + 0.1
    assert statistics.median(result["highs"]) <= bound, (result["highs"], prefill, step)
    # No sequence was preempted more often than the bound.
    worker_log = small_cluster.log_dir / "worker-0.log"
    events = [json.loads(line) for line in worker_log.read_text().splitlines() if '"sequence_preempted"' in line]
    assert events and max(e["preemptions"] for e in events) <= MAX_PREEMPTIONS

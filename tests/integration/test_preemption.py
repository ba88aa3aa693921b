"""Preemption by priority in the flat engine, on the real model: a higher level takes a busy engine's
slot at once, the preempted sequence resumes with exactly the tokens it would have produced (keys and
values kept, or recomputed when the KV budget cannot hold them), within the bound, never for an equal
level."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2
from tests.helpers.engines import chat_ids
from tests.integration.test_batching_engine import QUESTIONS, collect

pytestmark = pytest.mark.integration

LOW, NORMAL, HIGH, CRITICAL = (common_pb2.PRIORITY_LOW, common_pb2.PRIORITY_NORMAL, common_pb2.PRIORITY_HIGH, common_pb2.PRIORITY_CRITICAL)
LONG = 48


async def started(loaded, **kwargs) -> FlatBatchingEngine:
    engine = FlatBatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, **kwargs)
    await engine.start()
    return engine


def request(loaded, name: str, question: str, priority: int, max_tokens: int = LONG) -> EngineRequest:
    return EngineRequest(name, tuple(chat_ids(loaded, question)), SamplingConfig(max_tokens=max_tokens), ignore_eos=True, priority=priority)


class Stream:
    """One request's tokens as they come."""

    def __init__(self, engine, req: EngineRequest) -> None:
        self.tokens: list[int] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(engine, req))

    async def _run(self, engine, req: EngineRequest) -> list[int]:
        try:
            async for out in engine.submit(req):
                self.tokens.extend(out.token_ids)
                self._changed.set()
            return self.tokens
        finally:
            self._changed.set()

    async def until(self, count: int) -> None:
        """Until the request has `count` tokens (fails if it ends with fewer)."""
        while len(self.tokens) < count:
            assert not self.task.done(), f"ended with {len(self.tokens)} tokens"
            self._changed.clear()
            await self._changed.wait()


def preemptions(cause: str, resume: str) -> float:
    return REGISTRY.get_sample_value("llmserve_worker_preemptions_total", {"cause": cause, "resume": resume}) or 0.0


async def alone(engine, reqs: list[EngineRequest]) -> list[list[int]]:
    return [(await collect(engine, EngineRequest(f"alone-{r.request_id}", r.prompt_ids, r.sampling, ignore_eos=True)))[1] for r in reqs]


async def preempted_run(loaded, max_kv_tokens: int, high_tokens: int = 8) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Two normal requests fill a two-slot engine; a high one arrives once they are running. Returns the
    normal requests' tokens alone and beside the high one, the high one's, and how far each normal
    request was when the high one's first token came."""
    engine = await started(loaded, max_running=2, max_kv_tokens=max_kv_tokens, max_preemptions=2)
    try:
        normal = [request(loaded, f"n{i}", q, NORMAL) for i, q in enumerate(QUESTIONS[2:4])]
        reference = await alone(engine, normal)
        streams = [Stream(engine, r) for r in normal]
        await asyncio.wait_for(asyncio.gather(*(s.until(4) for s in streams)), 60)
        high_stream = Stream(engine, request(loaded, "h", QUESTIONS[0], HIGH, max_tokens=high_tokens))
        await asyncio.wait_for(high_stream.until(1), 60)
        # The high request's first token came while both normal requests were still unfinished.
        progress = [len(s.tokens) for s in streams]
        got = await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 120)
        assert len(await asyncio.wait_for(high_stream.task, 60)) == high_tokens
        assert engine.stats().slots_busy == 0 and engine._kept_positions == 0
        return reference, got, progress
    finally:
        await engine.stop()


async def test_a_high_request_preempts_and_the_preempted_output_is_unchanged(flat_smollm, mode):
    loaded = flat_smollm(mode)
    before = preemptions("slots", "kept")
    reference, got, progress = await preempted_run(loaded, max_kv_tokens=65536)
    assert all(p < LONG for p in progress), progress
    assert got == reference
    assert preemptions("slots", "kept") == before + 1


async def test_a_preempted_sequence_is_recomputed_when_the_budget_cannot_keep_it(flat_smollm, mode):
    loaded = flat_smollm(mode)
    prompts = [len(chat_ids(loaded, q)) for q in QUESTIONS[:4]]
    # Room for the two normal requests' reservations only; the high request reserves as much as one
    # of them frees, so keeping the preempted row's keys and values beside it does not fit.
    budget = 2 * (max(prompts[2:4]) + LONG)
    before = preemptions("slots", "recompute")
    reference, got, progress = await preempted_run(loaded, max_kv_tokens=budget, high_tokens=min(prompts[2:4]) + LONG - prompts[0])
    assert all(p < LONG for p in progress), progress
    assert got == reference
    assert preemptions("slots", "recompute") == before + 1


@pytest.mark.parametrize("mode", ["int8"])
async def test_preemption_is_bounded_and_never_for_an_equal_level(flat_smollm, mode):
    loaded = flat_smollm(mode)
    engine = await started(loaded, max_running=1, max_preemptions=1)
    try:
        low = request(loaded, "low", QUESTIONS[2], LOW, max_tokens=40)
        reference = (await alone(engine, [low]))[0]
        before = sum(preemptions(c, r) for c in ("slots", "kv_budget") for r in ("kept", "recompute"))
        low_stream = Stream(engine, low)
        await asyncio.wait_for(low_stream.until(4), 60)
        # Another low request waits: an equal level never preempts.
        other_low = Stream(engine, request(loaded, "low2", QUESTIONS[3], LOW, max_tokens=4))
        first = Stream(engine, request(loaded, "h1", QUESTIONS[0], HIGH, max_tokens=4))
        await asyncio.wait_for(first.task, 60)
        # The low request resumes after the high one; a critical one arriving now may not preempt it
        # again (bound 1): it waits for the low request's end, then runs before the other low one.
        await asyncio.wait_for(low_stream.until(len(low_stream.tokens) + 1), 60)
        assert len(low_stream.tokens) < 40
        second = Stream(engine, request(loaded, "h2", QUESTIONS[1], CRITICAL, max_tokens=4))
        await asyncio.wait_for(second.until(1), 60)
        assert low_stream.task.done() and low_stream.tokens == reference
        assert not other_low.tokens
        await asyncio.wait_for(asyncio.gather(second.task, other_low.task), 60)
        after = sum(preemptions(c, r) for c in ("slots", "kv_budget") for r in ("kept", "recompute"))
        assert after == before + 1
    finally:
        await engine.stop()


@pytest.fixture(params=("float", "int8"))
def mode(request):
    return request.param

"""The continuous-batching engine on the real model: exactness, isolation, finish rules, slots, chunked prefill."""

import asyncio
import random

import pytest
import torch

from llmserve.model_worker.batching_engine import BatchingEngine
from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2
from tests.helpers.engines import chat_ids

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "Explain gravity in one sentence.",
    "What is 2+2?",
    "Tell me about dogs and why people like them so much.",
    "List the planets of the solar system in order from the sun.",
    "Why is the sky blue?",
    "Hi",
    "Translate 'good morning' into Spanish, French and German, and say which is most common.",
    "What is a prime number?",
    "Give me a recipe for pancakes.",
    "Who wrote Hamlet?",
    "How many legs does a spider have?",
    "Describe a sunset in two sentences.",
    "What does a CPU do?",
]


def engine_with(loaded, **kwargs) -> BatchingEngine:
    return BatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, **kwargs)


@pytest.fixture
async def engine(served_smollm):
    e = engine_with(served_smollm, max_running=16, prefill_chunk=256)
    await e.start()
    yield e
    await e.stop()


async def collect(engine, request, delay: float = 0.0):
    await asyncio.sleep(delay)
    outs = [o async for o in engine.submit(request)]
    return outs, [t for o in outs for t in o.token_ids], "".join(o.text for o in outs)


def reference(loaded, ids, max_tokens):
    with torch.inference_mode():
        return loaded.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)[0, len(ids):].tolist()


async def test_greedy_alone_equals_generate(engine, loaded_smollm):
    ids = chat_ids(loaded_smollm, QUESTIONS[0])
    _, got, text = await collect(engine, EngineRequest("a", ids, SamplingConfig(max_tokens=20)))
    assert got == reference(loaded_smollm, ids, 20)
    assert "Paris" in text


async def test_greedy_batched_with_15_others_equals_generate(engine, loaded_smollm):
    rng = random.Random(3)
    prompts = [chat_ids(loaded_smollm, q) for q in QUESTIONS]
    lengths = [rng.randint(8, 28) for _ in prompts]
    # Requests of different lengths arrive at different times, so the batch changes at many steps.
    results = await asyncio.gather(
        *(
            collect(engine, EngineRequest(f"b{i}", p, SamplingConfig(max_tokens=n)), delay=rng.random() * 1.5)
            for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))
        )
    )
    for prompt, n, (outs, got, _) in zip(prompts, lengths, results, strict=True):
        assert got == reference(loaded_smollm, prompt, n)
        assert outs[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)


async def test_seeded_sampling_is_the_same_alone_and_batched(engine, loaded_smollm):
    ids = chat_ids(loaded_smollm, "Tell me a story.")
    cfg = SamplingConfig(temperature=0.9, top_p=0.9, top_k=50, seed=2024, max_tokens=16)
    _, alone, _ = await collect(engine, EngineRequest("s-alone", ids, cfg))
    others = [collect(engine, EngineRequest(f"s-other{i}", chat_ids(loaded_smollm, q), SamplingConfig(temperature=1.0, max_tokens=16))) for i, q in enumerate(QUESTIONS[:6])]
    results = await asyncio.gather(collect(engine, EngineRequest("s-batched", ids, cfg), delay=0.2), *others)
    assert results[0][1] == alone


async def test_stop_sequence_and_max_tokens(engine, loaded_smollm):
    ids = chat_ids(loaded_smollm, QUESTIONS[0])
    stop_run, length_run = await asyncio.gather(
        collect(engine, EngineRequest("st", ids, SamplingConfig(max_tokens=20, stop=(" Paris",)))),
        collect(engine, EngineRequest("ln", chat_ids(loaded_smollm, "Tell me a long story."), SamplingConfig(max_tokens=7))),
    )
    outs, _, text = stop_run
    assert outs[-1].finish_reason == common_pb2.FINISH_REASON_STOP and text == "The capital of France is"
    outs, got, _ = length_run
    assert outs[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH and len(got) == 7


async def test_cancelled_slot_is_reused(served_smollm, loaded_smollm):
    engine = engine_with(served_smollm, max_running=2)
    await engine.start()
    try:
        long = SamplingConfig(max_tokens=400)
        ids = chat_ids(loaded_smollm, "Write a long essay about the sea.")
        first = asyncio.create_task(collect(engine, EngineRequest("c1", ids, long)))
        second_stream = engine.submit(EngineRequest("c2", ids, EngineRequest("x", ids, long).sampling, ignore_eos=True))
        await anext(second_stream)  # c2 runs: both slots are busy now
        third = asyncio.create_task(collect(engine, EngineRequest("c3", chat_ids(loaded_smollm, QUESTIONS[0]), SamplingConfig(max_tokens=12))))
        await asyncio.sleep(0.3)
        assert not third.done() and engine.stats().slots_busy == 3
        assert engine.cancel("c1")
        outs, _, _ = await asyncio.wait_for(first, 10)
        assert outs[-1].finish_reason == common_pb2.FINISH_REASON_CANCELLED
        # c3 takes c1's slot and finishes while c2 is still generating.
        _, _, text = await asyncio.wait_for(third, 30)
        assert "Paris" in text
        assert engine.stats().slots_busy == 1
        engine.cancel("c2")
        async for _ in second_stream:
            pass
    finally:
        await engine.stop()


async def test_long_prompt_is_prefilled_in_chunks_while_others_decode(served_smollm, loaded_smollm):
    engine = engine_with(served_smollm, max_running=4, prefill_chunk=32)
    await engine.start()
    try:
        progress: list[str] = []

        async def short():
            async for out in engine.submit(EngineRequest("short", chat_ids(loaded_smollm, QUESTIONS[1]), SamplingConfig(max_tokens=200), ignore_eos=True)):
                progress.append("short")
                if out.finished:
                    return

        async def long():
            long_ids = chat_ids(loaded_smollm, "Summarise this text. " + "The river flows to the sea. " * 40)
            assert len(long_ids) > 6 * 32
            async for out in engine.submit(EngineRequest("long", long_ids, SamplingConfig(max_tokens=4))):
                progress.append("long")
                if out.finished:
                    return

        short_task = asyncio.create_task(short())
        while not progress:
            await asyncio.sleep(0.01)
        await long()
        engine.cancel("short")
        await short_task
        first_long = progress.index("long")
        before = progress[:first_long].count("short")
        # The long prompt needed at least 7 iterations of 32 tokens; the short request decoded in each.
        assert before >= 7
    finally:
        await engine.stop()


async def test_kv_budget_holds_requests_back_until_memory_frees(served_smollm, loaded_smollm):
    ids = chat_ids(loaded_smollm, QUESTIONS[0])
    engine = engine_with(served_smollm, max_running=8, max_kv_tokens=len(ids) + 40)
    await engine.start()
    try:
        order: list[str] = []

        async def run(rid):
            async for out in engine.submit(EngineRequest(rid, ids, SamplingConfig(max_tokens=30))):
                if out.finished:
                    order.append(rid)

        await asyncio.gather(run("k1"), run("k2"))
        # Only one fits the budget at a time: both finish, one after the other.
        assert sorted(order) == ["k1", "k2"]
        with pytest.raises(ValueError):
            await anext(engine.submit(EngineRequest("too-big", ids, SamplingConfig(max_tokens=1000))))
    finally:
        await engine.stop()

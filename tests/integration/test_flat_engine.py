"""The flat-decoder engine on the real model, in each numeric mode: exactness against transformers (float),
batched equals alone, migration, chunked prefill, cancellation, the int8 answer."""

import asyncio
import random

import pytest
import torch

from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2
from tests.helpers.engines import chat_ids
from tests.integration.test_batching_engine import QUESTIONS, collect, reference

pytestmark = pytest.mark.integration

MODES = ("float", "int8")


async def started(loaded, **kwargs) -> FlatBatchingEngine:
    engine = FlatBatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, **kwargs)
    await engine.start()
    return engine


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


async def test_float_greedy_equals_transformers_generate(flat_smollm, loaded_smollm):
    loaded = flat_smollm("float")
    assert loaded.flat and loaded.numerics == "float32"
    engine = await started(loaded, max_running=8)
    try:
        for i, question in enumerate(QUESTIONS[:4]):
            ids = chat_ids(loaded, question)
            _, got, _ = await collect(engine, EngineRequest(f"g{i}", ids, SamplingConfig(max_tokens=20)))
            assert got == reference(loaded_smollm, ids, 20)
    finally:
        await engine.stop()


async def test_greedy_batched_equals_alone(flat_smollm, mode):
    loaded = flat_smollm(mode)
    engine = await started(loaded, max_running=16)
    try:
        rng = random.Random(5)
        prompts = [chat_ids(loaded, q) for q in QUESTIONS]
        lengths = [rng.randint(8, 28) for _ in prompts]
        alone = []
        for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
            alone.append((await collect(engine, EngineRequest(f"alone{i}", p, SamplingConfig(max_tokens=n))))[1])
        # Requests of different lengths arrive at different times, so the batch changes at many steps.
        batched = await asyncio.gather(
            *(
                collect(engine, EngineRequest(f"batched{i}", p, SamplingConfig(max_tokens=n)), delay=rng.random() * 1.0)
                for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))
            )
        )
        assert [b[1] for b in batched] == alone
    finally:
        await engine.stop()


async def test_migration_continues_exactly(flat_smollm, mode):
    loaded = flat_smollm(mode)
    engine = await started(loaded, max_running=8)
    try:
        for i, question in enumerate(QUESTIONS[5:8]):
            ids = chat_ids(loaded, question)
            _, full, text = await collect(engine, EngineRequest(f"full{i}", ids, SamplingConfig(max_tokens=40), ignore_eos=True))
            k = len(full) // 2
            done_text = loaded.tokenizer.decode(full[:k], skip_special_tokens=True)
            resumed = EngineRequest(f"resumed{i}", ids, SamplingConfig(max_tokens=40), ignore_eos=True, resume_ids=tuple(full[:k]), resume_text_chars=len(done_text))
            # Resumed next to another request, as it would be on the worker that takes it over.
            (_, rest, rest_text), _ = await asyncio.gather(
                collect(engine, resumed), collect(engine, EngineRequest(f"other{i}", chat_ids(loaded, QUESTIONS[0]), SamplingConfig(max_tokens=30)))
            )
            assert full[:k] + rest == full
            assert done_text + rest_text == text
    finally:
        await engine.stop()


async def test_float_chunked_prefill_equals_generate(flat_smollm, loaded_smollm):
    loaded = flat_smollm("float")
    engine = await started(loaded, max_running=4, prefill_chunk=16)
    try:
        long_ids = chat_ids(loaded, "Summarise this text. " + "The river flows to the sea. " * 12)
        short_ids = chat_ids(loaded, QUESTIONS[1])
        (_, got, _), (_, short, _) = await asyncio.gather(
            collect(engine, EngineRequest("long", long_ids, SamplingConfig(max_tokens=12))),
            collect(engine, EngineRequest("short", short_ids, SamplingConfig(max_tokens=12))),
        )
        assert got == reference(loaded_smollm, long_ids, 12)
        assert short == reference(loaded_smollm, short_ids, 12)
    finally:
        await engine.stop()


async def test_int8_answers_and_cancel_frees_the_slot(flat_smollm):
    loaded = flat_smollm("int8")
    assert loaded.numerics == "int8"
    engine = await started(loaded, max_running=2)
    try:
        ids = chat_ids(loaded, "Write a long essay about the sea.")
        first = asyncio.create_task(collect(engine, EngineRequest("c1", ids, SamplingConfig(max_tokens=400), ignore_eos=True)))
        second = engine.submit(EngineRequest("c2", ids, SamplingConfig(max_tokens=400), ignore_eos=True))
        await anext(second)
        third = asyncio.create_task(collect(engine, EngineRequest("c3", chat_ids(loaded, QUESTIONS[0]), SamplingConfig(max_tokens=12))))
        assert engine.cancel("c1")
        outs, _, _ = await asyncio.wait_for(first, 30)
        assert outs[-1].finish_reason == common_pb2.FINISH_REASON_CANCELLED
        _, _, text = await asyncio.wait_for(third, 30)
        assert "Paris" in text
        engine.cancel("c2")
        async for _ in second:
            pass
        assert engine.stats().slots_busy == 0
    finally:
        await engine.stop()


def test_decoder_memory_is_its_own(flat_smollm):
    """No tensor of the int8 decoder views the memory-mapped checkpoint (which would keep it resident)."""
    decoder = flat_smollm("int8").model
    assert decoder.embed.rows.dtype == torch.int8
    assert decoder.weight_bytes() < 200 * 2**20


async def test_cached_prompts_give_the_same_tokens(flat_smollm, mode):
    """A prompt served from the prompt cache (alone, and joining a running batch) gives the tokens it
    gives when prefilled."""
    loaded = flat_smollm(mode)
    prompts = [chat_ids(loaded, q) for q in QUESTIONS[:4]]
    plain = await started(loaded, max_running=8)
    try:
        want = [(await collect(plain, EngineRequest(f"plain{i}", p, SamplingConfig(max_tokens=12))))[1] for i, p in enumerate(prompts)]
    finally:
        await plain.stop()
    engine = await started(loaded, max_running=8, prompt_cache_bytes=64 * 2**20)
    try:
        first = [(await collect(engine, EngineRequest(f"first{i}", p, SamplingConfig(max_tokens=12))))[1] for i, p in enumerate(prompts)]
        assert engine.prompt_cache.hits == 0 and len(engine.prompt_cache) == 4
        again = await asyncio.gather(
            *(collect(engine, EngineRequest(f"again{i}", p, SamplingConfig(max_tokens=12)), delay=0.05 * i) for i, p in enumerate(prompts))
        )
        assert engine.prompt_cache.hits == 4
        assert first == want
        assert [tokens for _, tokens, _ in again] == want
    finally:
        await engine.stop()


async def test_logprobs_match_transformers_and_leave_the_tokens_alone(flat_smollm, loaded_smollm):
    """Greedy, first 8 tokens: each token's logprob and its top 5 alternatives within 1e-3 of
    log_softmax over transformers' logits for the same context."""
    loaded = flat_smollm("float")
    engine = await started(loaded, max_running=4)
    try:
        ids = chat_ids(loaded, QUESTIONS[0])
        _, plain, _ = await collect(engine, EngineRequest("plain", ids, SamplingConfig(max_tokens=8)))
        outs, got, _ = await collect(engine, EngineRequest("lp", ids, SamplingConfig(max_tokens=8, logprobs=True, top_logprobs=5)))
    finally:
        await engine.stop()
    assert got == plain
    entries = [lp for o in outs for lp in o.logprobs]
    assert [e.token_id for e in entries] == got
    with torch.inference_mode():
        logits = loaded_smollm.model(torch.tensor([list(ids) + got])).logits[0, len(ids) - 1 : len(ids) - 1 + len(got)]
        expected = torch.log_softmax(logits.float(), dim=-1)
    for k, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(float(expected[k, got[k]]), abs=1e-3)
        assert len(entry.top_logprobs) == 5 and entry.top_logprobs[0].token_id == got[k]  # greedy: the best one
        for alt in entry.top_logprobs:
            assert alt.logprob == pytest.approx(float(expected[k, alt.token_id]), abs=1e-3)
        assert entry.token == loaded.tokenizer.decode([got[k]])


async def test_min_tokens_holds_off_the_end_of_sequence(flat_smollm):
    loaded = flat_smollm("int8")
    engine = await started(loaded, max_running=4)
    try:
        ids = chat_ids(loaded, "Thanks!")
        outs, free, _ = await collect(engine, EngineRequest("free", ids, SamplingConfig(max_tokens=40)))
        assert outs[-1].finish_reason == common_pb2.FINISH_REASON_STOP and len(free) < 8
        outs, held, _ = await collect(engine, EngineRequest("held", ids, SamplingConfig(max_tokens=40, min_tokens=10)))
        assert len(held) >= 10 and not set(held[:9]) & loaded.eos_ids
        assert held[: len(free) - 1] == free[:-1]  # the same answer up to where it used to end
    finally:
        await engine.stop()


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def constrained(loaded, rid: str, question: str, schema: dict, max_tokens: int = 60) -> EngineRequest:
    import json

    from llmserve.model_worker.constraints import ConstraintCompiler
    from llmserve.model_worker.job_request import output_constraint
    from llmserve.v1 import events_pb2

    compiler = getattr(loaded, "_test_constraints", None) or ConstraintCompiler(loaded.tokenizer, loaded.eos_ids)
    loaded._test_constraints = compiler
    job = events_pb2.Job(sampling=common_pb2.SamplingParams(constraint=common_pb2.OutputConstraint(json_schema=json.dumps(schema))))
    return EngineRequest(rid, chat_ids(loaded, question), SamplingConfig(max_tokens=max_tokens), constraint=output_constraint(job, compiler))


async def test_constrained_rows_follow_their_schema_beside_free_rows_that_do_not_change(flat_smollm):
    import json

    loaded = flat_smollm("int8")
    engine = await started(loaded, max_running=8)
    try:
        free_prompts = [chat_ids(loaded, q) for q in QUESTIONS[:4]]
        alone = [(await collect(engine, EngineRequest(f"alone{i}", p, SamplingConfig(max_tokens=24))))[1] for i, p in enumerate(free_prompts)]
        people = ["Describe a person called Anna from Paris.", "Invent a character.", "Who is Bob? He is 42.", "Make up a sailor."]
        results = await asyncio.gather(
            *(collect(engine, EngineRequest(f"free{i}", p, SamplingConfig(max_tokens=24))) for i, p in enumerate(free_prompts)),
            *(collect(engine, constrained(loaded, f"json{i}", q, PERSON)) for i, q in enumerate(people)),
        )
    finally:
        await engine.stop()
    assert [r[1] for r in results[:4]] == alone
    for outs, _, text in results[4:]:
        assert outs[-1].finish_reason == common_pb2.FINISH_REASON_STOP, text
        value = json.loads(text)
        assert set(value) == {"name", "age", "city"} and isinstance(value["age"], int) and isinstance(value["name"], str)


async def test_identical_prompts_arriving_together_share_one_prefill(flat_smollm):
    """The choices of an n > 1 request: one segment prefills the prompt, the others copy its row;
    greedy choices equal the request alone, seeded ones follow their own seeds."""
    loaded = flat_smollm("int8")
    engine = FlatBatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, max_running=8)
    prefilled: list[int] = []
    forward = loaded.model.forward

    def counting(segments, cache):
        prefilled.extend(len(s.tokens) for s in segments if s.start == 0 and len(s.tokens) > 1)
        return forward(segments, cache)

    loaded.model.forward = counting
    try:
        ids = chat_ids(loaded, QUESTIONS[2])
        # The three arrive together for certain: they are queued before the engine thread runs.
        engine._loop = asyncio.get_running_loop()
        together = [asyncio.ensure_future(collect(engine, EngineRequest(f"g{i}", ids, SamplingConfig(max_tokens=12)))) for i in range(3)]
        for _ in range(100):
            if engine._inbox.qsize() == 3:
                break
            await asyncio.sleep(0)
        assert engine._inbox.qsize() == 3
        await engine.start()
        greedy = await asyncio.wait_for(asyncio.gather(*together), 60)
        assert prefilled == [len(ids)]
        _, alone, _ = await collect(engine, EngineRequest("alone", ids, SamplingConfig(max_tokens=12)))
        assert [g[1] for g in greedy] == [alone] * 3
        seeded = [SamplingConfig(max_tokens=12, temperature=1.0, seed=7 + i) for i in range(3)]
        first = await asyncio.gather(*(collect(engine, EngineRequest(f"s{i}", ids, c)) for i, c in enumerate(seeded)))
        again = await asyncio.gather(*(collect(engine, EngineRequest(f"t{i}", ids, c)) for i, c in enumerate(seeded)))
        assert [f[1] for f in first] == [a[1] for a in again]
        assert len({tuple(f[1]) for f in first}) > 1
    finally:
        loaded.model.forward = forward
        await engine.stop()


MANUAL = (
    "You are the help desk of a lighthouse museum. The museum opens at nine and closes at five, every day but Monday. "
    "Tickets cost eight euros, children under twelve enter free, and the tower climb is one hundred and twelve steps. "
)


def conversation_ids(loaded, turns: list[tuple[str, str]]) -> tuple[int, ...]:
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": r, "content": c} for r, c in turns], add_generation_prompt=True, tokenize=False)
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("prefill_chunk", [512, 128])
async def test_a_follow_up_turn_reuses_the_conversation_with_identical_output(flat_smollm, prefill_chunk):
    """The second turn's prompt starts with the first's: its whole blocks come from the prefix cache,
    and its greedy answer is token-identical to a worker that computes everything (whatever the chunking)."""
    loaded = flat_smollm("int8")
    cached = await started(loaded, max_running=4, prefix_cache_share=0.05, prefill_chunk=prefill_chunk)
    plain = await started(loaded, max_running=4)
    try:
        first_turn = [("system", MANUAL * 6), ("user", "When does the museum open?")]
        first = conversation_ids(loaded, first_turn)
        assert len(first) > 3 * 64
        _, answer, text = await collect(cached, EngineRequest("t1", first, SamplingConfig(max_tokens=20)))
        second = conversation_ids(loaded, [*first_turn, ("assistant", text), ("user", "And how much is a ticket?")])
        assert second[: len(first) - 8] == first[: len(first) - 8]
        hits_before = cached.prefix_cache.hit_tokens
        _, reused, _ = await collect(cached, EngineRequest("t2", second, SamplingConfig(max_tokens=24)))
        _, computed, _ = await collect(plain, EngineRequest("t2-plain", second, SamplingConfig(max_tokens=24)))
        assert reused == computed
        assert cached.prefix_cache.hit_tokens - hits_before >= (len(first) // 64 - 1) * 64
    finally:
        await cached.stop()
        await plain.stop()

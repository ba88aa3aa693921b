"""The serial engine against transformers' own generate, on the real model."""

import asyncio

import pytest
import torch

from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.model_worker.serial_engine import SerialEngine
from llmserve.v1 import common_pb2
from tests.helpers.engines import chat_ids

pytestmark = pytest.mark.integration


@pytest.fixture
def loaded(loaded_smollm):
    return loaded_smollm


@pytest.fixture
async def engine(loaded, served_smollm):
    e = SerialEngine(served_smollm.model, loaded.tokenizer, loaded.eos_ids, loaded.device)
    await e.start()
    yield e
    await e.stop()


prompt_ids = chat_ids


async def run(engine, request):
    outs = [o async for o in engine.submit(request)]
    ids = [t for o in outs for t in o.token_ids]
    return outs, ids, "".join(o.text for o in outs)


async def test_greedy_matches_transformers_generate(engine, loaded):
    ids = prompt_ids(loaded, "Name three colours.")
    request = EngineRequest("r1", ids, SamplingConfig(max_tokens=24))
    outs, got, text = await run(engine, request)
    with torch.inference_mode():
        expected = loaded.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert got == expected
    assert text == loaded.tokenizer.decode(expected, skip_special_tokens=True)
    assert outs[-1].finished and outs[-1].completion_tokens == len(expected)


async def test_answer_is_paris(engine, loaded):
    _, _, text = await run(engine, EngineRequest("r2", prompt_ids(loaded, "What is the capital of France?"), SamplingConfig(max_tokens=20)))
    assert "Paris" in text


async def test_seeded_sampling_is_reproducible(engine, loaded):
    ids = prompt_ids(loaded, "Tell me a story.")
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16)
    _, a, _ = await run(engine, EngineRequest("s1", ids, cfg))
    _, b, _ = await run(engine, EngineRequest("s2", ids, cfg))
    _, c, _ = await run(engine, EngineRequest("s3", ids, SamplingConfig(temperature=1.0, top_p=0.9, seed=99, max_tokens=16)))
    assert a == b
    assert a != c


async def test_max_tokens_ends_with_length(engine, loaded):
    outs, got, _ = await run(engine, EngineRequest("l1", prompt_ids(loaded, "Tell me a long story."), SamplingConfig(max_tokens=5)))
    assert len(got) == 5
    assert outs[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_stop_sequence_ends_with_stop_and_is_not_sent(engine, loaded):
    outs, _, text = await run(
        engine, EngineRequest("st", prompt_ids(loaded, "What is the capital of France?"), SamplingConfig(max_tokens=20, stop=("Paris",)))
    )
    assert outs[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert "Paris" not in text and text.startswith("The capital of France is")


async def test_cancel_stops_at_the_next_step(engine, loaded):
    request = EngineRequest("c1", prompt_ids(loaded, "Tell me a long story."), SamplingConfig(max_tokens=500), ignore_eos=True)
    outs = []
    async for out in engine.submit(request):
        outs.append(out)
        if len(outs) == 3:
            assert engine.cancel("c1")
    assert outs[-1].finish_reason == common_pb2.FINISH_REASON_CANCELLED
    # At most one step was already under way when the cancel arrived.
    assert len(outs) <= 5
    # The slot is free again: the next request runs.
    _, _, text = await asyncio.wait_for(
        run(engine, EngineRequest("c2", prompt_ids(loaded, "What is the capital of France?"), SamplingConfig(max_tokens=12))), 60
    )
    assert "Paris" in text

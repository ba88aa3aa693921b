"""The measured scenarios: transformers generate (alone, static batch), the engine in-process, the whole stack."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from bench.measure import PeakRss, RequestTiming, now, summarize
from llmserve.model_worker.batching_engine import BatchingEngine
from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "Explain how a bicycle works.",
    "What are the benefits of drinking water?",
    "Describe the water cycle.",
    "Give me three tips for learning a new language.",
    "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.",
    "How do airplanes stay in the air?",
    "What is photosynthesis?",
    "Summarise the plot of Romeo and Juliet.",
    "Why do cats purr?",
    "What is machine learning?",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a bakery.",
    "What causes earthquakes?",
]


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def questions(n: int) -> list[str]:
    """n distinct questions (the list, then the list again asking for detail)."""
    return [PROMPTS[i % len(PROMPTS)] + (" Answer in detail." if i >= len(PROMPTS) else "") for i in range(n)]


class _StepClock(LogitsProcessor):
    """Records when each decode step's logits are ready (one call per generated token position)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.stamps.append(now())
        return scores


def _generate(model: Any, batch: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, list[float]]:
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    clock = _StepClock()
    start = now()
    with torch.inference_mode():
        model.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=pad_id, logits_processor=LogitsProcessorList([clock]),
        )
    return start, clock.stamps


def hf_one_at_a_time(model: Any, prompts: list[list[int]], new_tokens: int, pad_id: int) -> dict:
    _generate(model, prompts[:1], 4, pad_id)  # warm-up
    timings = []
    with PeakRss() as rss:
        started = now()
        for p in prompts:
            start, stamps = _generate(model, [p], new_tokens, pad_id)
            timings.append(RequestTiming(start, stamps, new_tokens))
        wall = now() - started
    return summarize("(a) transformers generate, one at a time", timings, wall, rss.peak, concurrency=1)


def hf_static_batch(model: Any, prompts: list[list[int]], new_tokens: int, pad_id: int) -> dict:
    _generate(model, prompts[:2], 4, pad_id)
    with PeakRss() as rss:
        start, stamps = _generate(model, prompts, new_tokens, pad_id)
        wall = now() - start
    timings = [RequestTiming(start, stamps, new_tokens) for _ in prompts]
    return summarize(f"(b) transformers generate, static batch of {len(prompts)}", timings, wall, rss.peak, concurrency=len(prompts))


async def _engine_wave(engine: BatchingEngine, prompts: list[list[int]], new_tokens: int, concurrency: int, tag: str) -> list[RequestTiming]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: list[int]) -> RequestTiming:
        async with gate:
            timing = RequestTiming(now())
            request = EngineRequest(f"{tag}-{i}", tuple(prompt), SamplingConfig(max_tokens=new_tokens), ignore_eos=True)
            async for out in engine.submit(request):
                if out.token_ids:
                    timing.arrivals.append(now())
                    timing.tokens += len(out.token_ids)
            return timing

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


def engine_in_process(loaded: Any, prompts: list[list[int]], new_tokens: int, concurrency: int, max_running: int) -> dict:
    async def run() -> dict:
        engine_class = FlatBatchingEngine if loaded.flat else BatchingEngine
        engine = engine_class(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, max_running=max_running)
        await engine.start()
        try:
            await _engine_wave(engine, prompts[:1], 4, 1, "warm")
            with PeakRss() as rss:
                started = now()
                timings = await _engine_wave(engine, prompts, new_tokens, concurrency, f"c{concurrency}")
                wall = now() - started
        finally:
            await engine.stop()
        return summarize(f"(c) engine in-process, concurrency {concurrency}", timings, wall, rss.peak, concurrency=concurrency)

    return asyncio.run(run())


async def _grpc_wave(addr: str, questions: list[str], new_tokens: int, concurrency: int) -> list[RequestTiming]:
    gate = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def one(question: str) -> RequestTiming:
            async with gate:
                request = inference_pb2.GenerateRequest(
                    messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=question)]),
                    sampling=common_pb2.SamplingParams(max_tokens=new_tokens, ignore_eos=True),
                )
                timing = RequestTiming(now())
                async for response in stub.GenerateStream(request, timeout=600):
                    if response.text:
                        timing.arrivals.append(now())
                    if response.finish_reason:
                        timing.tokens = response.usage.completion_tokens
                return timing

        return await asyncio.gather(*(one(q) for q in questions))


def stack_through_grpc(addr: str, worker_pid: int, questions: list[str], new_tokens: int, concurrency: int) -> dict:
    asyncio.run(_grpc_wave(addr, questions[:1], 4, 1))  # warm-up
    with PeakRss(worker_pid) as rss:
        started = now()
        timings = asyncio.run(_grpc_wave(addr, questions, new_tokens, concurrency))
        wall = now() - started
    return summarize(f"(d) whole stack via gRPC, concurrency {concurrency}", timings, wall, rss.peak, concurrency=concurrency)

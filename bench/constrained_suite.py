"""`make bench SUITE=constrained`: the cost of constrained decoding in a shared batch.

The engine in-process (the worker's numerics) runs 16 concurrent requests of 64 tokens twice per
round, in interleaved rounds: all free, then half of them constrained to a JSON Schema (an array of
at least 100 integers, so no constrained row finishes before the free ones). The target: throughput
with half the rows constrained is at least 0.8x the all-free throughput. Writes
bench/results/<date>-constrained.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.stack import default_model_record
from llmserve.model_worker.constraints import ConstraintCompiler
from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.job_request import output_constraint
from llmserve.model_worker.loader import load_model
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.v1 import common_pb2, events_pb2

CONCURRENCY = 16
TARGET = 0.8
SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 100}


async def _wave(engine: FlatBatchingEngine, loaded: Any, compiler: ConstraintCompiler, constrained: int, new_tokens: int, tag: str) -> tuple[int, float]:
    prompts = [scenarios.chat_ids(loaded.tokenizer, q) for q in scenarios.questions(CONCURRENCY)]
    job = events_pb2.Job(sampling=common_pb2.SamplingParams(constraint=common_pb2.OutputConstraint(json_schema=json.dumps(SCHEMA))))

    async def one(i: int) -> int:
        if i < constrained:
            request = EngineRequest(f"{tag}-{i}", tuple(prompts[i]), SamplingConfig(max_tokens=new_tokens), constraint=output_constraint(job, compiler))
        else:
            request = EngineRequest(f"{tag}-{i}", tuple(prompts[i]), SamplingConfig(max_tokens=new_tokens), ignore_eos=True)
        return sum([len(out.token_ids) async for out in engine.submit(request)])

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(i) for i in range(CONCURRENCY)))
    return sum(tokens), time.perf_counter() - started


def run(store: Path, work: Path, rounds: int, new_tokens: int, log) -> dict:
    record = default_model_record(store, work, log)
    loaded = load_model(store / record.path, record.sha256, device="cpu", dtype="float32")
    compiler = ConstraintCompiler(loaded.tokenizer, loaded.eos_ids)

    async def go() -> dict:
        engine = FlatBatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, max_running=32)
        await engine.start()
        free, mixed = [], []
        try:
            await _wave(engine, loaded, compiler, CONCURRENCY // 2, 4, "warm")
            for r in range(rounds):
                tokens, wall = await _wave(engine, loaded, compiler, 0, new_tokens, f"free{r}")
                free.append(tokens / wall)
                tokens, wall = await _wave(engine, loaded, compiler, CONCURRENCY // 2, new_tokens, f"mixed{r}")
                mixed.append(tokens / wall)
                log(f"round {r + 1}/{rounds}: free {free[-1]:.1f} tok/s, half constrained {mixed[-1]:.1f} tok/s")
        finally:
            await engine.stop()
        ratios = [m / f for m, f in zip(mixed, free, strict=True)]
        return {
            "concurrency": CONCURRENCY, "new_tokens": new_tokens, "numerics": loaded.numerics, "schema": SCHEMA,
            "free_tokens_per_s": free, "half_constrained_tokens_per_s": mixed, "ratios": ratios,
            "median_ratio": statistics.median(ratios), "target": TARGET, "met": statistics.median(ratios) >= TARGET,
        }

    return asyncio.run(go())


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {i + 1} | {f:.1f} | {m:.1f} | {r:.2f} |"
        for i, (f, m, r) in enumerate(zip(report["free_tokens_per_s"], report["half_constrained_tokens_per_s"], report["ratios"], strict=True))
    )
    verdict = "met" if report["met"] else "missed"
    return (
        f"# Constrained decoding in a shared batch ({report['date']})\n\n"
        f"Engine in-process, {report['numerics']} numerics, {report['concurrency']} concurrent requests x {report['new_tokens']} tokens; "
        f"half of them constrained to `{json.dumps(report['schema'])}`.\n\n"
        "| round | all free, tok/s | half constrained, tok/s | ratio |\n|---|---|---|---|\n"
        f"{rows}\n\nMedian ratio **{report['median_ratio']:.2f}** (target >= {report['target']}): {verdict}.\n"
    )


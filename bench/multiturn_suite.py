"""`make bench SUITE=multiturn`: time to first token of a conversation's next turn, with the prefix cache.

The engine in-process (as a CPU worker loads it, prefix cache at the worker's default share) serves
the first turn of a 2,000-token conversation, then the second turn (the first turn, its answer and a
new question). Each round uses a conversation of its own, so a first turn never finds anything
cached. Target: the second turn's time to first token is at most 15 % of the first turn's. Writes
bench/results/<date>-multiturn.{json,md}.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from bench.stack import default_model_record
from llmserve.model_worker.engine import EngineRequest
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.loader import load_model
from llmserve.model_worker.sampling import SamplingConfig
from llmserve.model_worker.settings import WorkerSettings

TARGET = 0.15
CONVERSATION_TOKENS = 2000
PARAGRAPH = (
    "The archive keeps letters, ledgers and maps from the harbour's early years. Visitors may read them in the "
    "reading room on the second floor, where gloves are provided and photographs without flash are allowed. "
)


def _ids(tokenizer, turns: list[tuple[str, str]]) -> tuple[int, ...]:
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], add_generation_prompt=True, tokenize=False)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def _first_turn(tokenizer, round_: int) -> list[tuple[str, str]]:
    system = f"Conversation {round_}. "
    while len(_ids(tokenizer, [("system", system), ("user", "Hello")])) < CONVERSATION_TOKENS:
        system += PARAGRAPH
    return [("system", system), ("user", "Where can I read the letters?")]


async def _ttft(engine: FlatBatchingEngine, rid: str, ids: tuple[int, ...]) -> tuple[float, str]:
    started = time.perf_counter()
    first = None
    text = []
    async for out in engine.submit(EngineRequest(rid, ids, SamplingConfig(max_tokens=24))):
        if first is None and out.token_ids:
            first = time.perf_counter() - started
        text.append(out.text)
    return first or 0.0, "".join(text)


def run(store: Path, work: Path, rounds: int, log) -> dict:
    record = default_model_record(store, work, log)
    defaults = WorkerSettings()
    loaded = load_model(store / record.path, record.sha256, device="cpu", dtype="float32")

    async def go() -> dict:
        engine = FlatBatchingEngine(
            loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, max_running=defaults.max_running,
            max_kv_tokens=defaults.max_kv_tokens, prefill_chunk=defaults.prefill_chunk, prefix_cache_share=defaults.prefix_cache_share,
        )
        await engine.start()
        firsts, seconds, lengths = [], [], []
        try:
            await _ttft(engine, "warm", _ids(loaded.tokenizer, [("user", "Hi")]))
            for r in range(rounds):
                turn = _first_turn(loaded.tokenizer, r)
                ids = _ids(loaded.tokenizer, turn)
                first, answer = await _ttft(engine, f"r{r}-t1", ids)
                follow_up = _ids(loaded.tokenizer, [*turn, ("assistant", answer), ("user", "Do I need gloves?")])
                second, _ = await _ttft(engine, f"r{r}-t2", follow_up)
                firsts.append(first)
                seconds.append(second)
                lengths.append((len(ids), len(follow_up)))
                log(f"round {r + 1}/{rounds}: turn 1 ({len(ids)} tokens) {first:.2f} s, turn 2 ({len(follow_up)} tokens) {second:.3f} s")
        finally:
            await engine.stop()
        ratios = [s / f for s, f in zip(seconds, firsts, strict=True)]
        return {
            "numerics": loaded.numerics, "prefix_cache_share": defaults.prefix_cache_share, "prompt_tokens": lengths,
            "first_turn_ttft_s": firsts, "second_turn_ttft_s": seconds, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "target": TARGET, "met": statistics.median(ratios) <= TARGET,
            "hit_tokens": engine.prefix_cache.hit_tokens if engine.prefix_cache else 0,
        }

    return asyncio.run(go())


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {i + 1} | {n1} | {f:.2f} | {n2} | {s:.3f} | {r:.3f} |"
        for i, ((n1, n2), f, s, r) in enumerate(
            zip(report["prompt_tokens"], report["first_turn_ttft_s"], report["second_turn_ttft_s"], report["ratios"], strict=True)
        )
    )
    verdict = "met" if report["met"] else "missed"
    return (
        f"# Multi-turn time to first token with the prefix cache ({report['date']})\n\n"
        f"Engine in-process, {report['numerics']} numerics, prefix cache share {report['prefix_cache_share']}.\n\n"
        "| round | turn 1 tokens | turn 1 TTFT, s | turn 2 tokens | turn 2 TTFT, s | ratio |\n|---|---|---|---|---|---|\n"
        f"{rows}\n\nMedian ratio **{report['median_ratio']:.3f}** (target <= {report['target']}): {verdict}.\n"
    )

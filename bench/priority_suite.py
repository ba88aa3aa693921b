"""`make bench SUITE=priority`: a `high` request's time to first token on a worker saturated by `normal` work.

The whole stack with one worker (32 slots, the default) over REST. First, with the worker idle, the
high request's prompt is asked a few times: its idle time to first token stands for its prefill time
(it includes the stack's own dispatch, so the bound below is generous by that much). Then 40 clients
send `normal` streams of 128 to 384 tokens, each its next one when the last ends: every slot stays
busy and 8 more wait in the queue, while `high` requests arrive one at a time. A decode step is the median gap between tokens of the normal streams meanwhile.

Target (issue "Latency under load"): the high requests' median time to first token is at most its
prefill time + 2 decode steps + 100 ms. The same run with preemption off (LLMSERVE_WORKER_MAX_PREEMPTIONS
=0) shows what the target is measured against: the high request then waits for a slot. Writes
bench/results/<date>-priority.{json,md}.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from pathlib import Path

import httpx

from bench.measure import RequestTiming, now
from bench.rest_load import one_request
from bench.stack import default_model_record, running_stack

SLOTS = 32
FLOOD = 40
FLOOD_TOKENS = 256
HIGH_QUESTION = "What is the capital of France?"
FLOOD_QUESTIONS = ["Write a long story about a lighthouse keeper.", "Explain how a steam engine works, step by step.",
                   "Describe a walk through a busy market.", "List many facts about the ocean."]
HIGH_GAP_S = 0.5


async def _measure(base_url: str, highs: int, log) -> dict:
    limits = httpx.Limits(max_connections=FLOOD + 8, max_keepalive_connections=0)
    rng = random.Random(7)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def high() -> RequestTiming:
            return await one_request(client, base_url, HIGH_QUESTION, 8, {"priority": "high"})

        await high()  # warm-up
        idle = [(await high()).ttft for _ in range(3)]
        timings: list[RequestTiming] = []
        stop = asyncio.Event()

        async def normal_client(i: int) -> None:
            # A closed loop: each client sends its next request when the last one ends, with lengths that
            # vary so slots free at different moments, and the worker stays saturated throughout.
            while not stop.is_set():
                timing = RequestTiming(now())
                timings.append(timing)
                tokens = rng.randint(FLOOD_TOKENS // 2, FLOOD_TOKENS * 3 // 2)
                await one_request(client, base_url, FLOOD_QUESTIONS[i % len(FLOOD_QUESTIONS)], tokens, {"priority": "normal"}, timing)

        flood = [asyncio.create_task(normal_client(i)) for i in range(FLOOD)]
        # Saturated: every slot's stream has its first token (8 more wait in the queue).
        while sum(1 for t in timings if t.arrivals) < SLOTS:
            await asyncio.sleep(0.05)
        window_start = now()
        high_ttfts = []
        for _ in range(highs):
            high_ttfts.append((await high()).ttft)
            await asyncio.sleep(HIGH_GAP_S)
        window_end = now()
        stop.set()
        gaps = [b - a for t in timings for a, b in zip(t.arrivals, t.arrivals[1:], strict=False) if window_start <= a and b <= window_end]
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
    prefill = statistics.median(idle)
    step = statistics.median(gaps) if gaps else float("nan")
    bound = prefill + 2 * step + 0.1
    p50 = statistics.median(high_ttfts)
    log(f"  idle TTFT {prefill * 1000:.0f} ms, decode step {step * 1000:.0f} ms, high TTFT p50 {p50 * 1000:.0f} ms (bound {bound * 1000:.0f} ms)")
    return {
        "idle_ttft_s": idle, "prefill_s": prefill, "decode_step_s": step, "high_ttft_s": high_ttfts, "high_ttft_p50_s": p50,
        "bound_s": bound, "met": p50 <= bound,
    }


def run(store: Path, work: Path, rounds: int, log) -> dict:
    default_model_record(store, work, log)
    report: dict = {"slots": SLOTS, "flood": FLOOD, "flood_tokens": FLOOD_TOKENS, "high_requests": rounds}
    for name, env in (("preemption", {}), ("no_preemption", {"LLMSERVE_WORKER_MAX_PREEMPTIONS": "0"})):
        log(f"{name}: starting the stack ...")
        with running_stack(store, work / name, LLMSERVE_WORKER_MAX_RUNNING=str(SLOTS), **env) as (cluster, _pid):
            report[name] = asyncio.run(_measure(cluster.http_url, rounds, log))
    report["met"] = report["preemption"]["met"]
    return report


def markdown(report: dict) -> str:
    def row(name: str) -> str:
        r = report[name]
        ttfts = ", ".join(f"{t * 1000:.0f}" for t in r["high_ttft_s"])
        return (f"| {name.replace('_', ' ')} | {r['prefill_s'] * 1000:.0f} | {r['decode_step_s'] * 1000:.0f} | "
                f"{r['bound_s'] * 1000:.0f} | {r['high_ttft_p50_s'] * 1000:.0f} | {ttfts} | {'yes' if r['met'] else 'no'} |")

    verdict = "met" if report["met"] else "missed"
    return (
        f"# Priority under saturation ({report['date']})\n\n"
        f"One worker, {report['slots']} slots, {report['flood']} clients sending `normal` streams of "
        f"{report['flood_tokens'] // 2} to {report['flood_tokens'] * 3 // 2} tokens, one after another; "
        f"{report['high_requests']} `high` requests of 8 tokens, one at a time, while they run.\n\n"
        "| worker | prefill (idle TTFT), ms | decode step, ms | bound, ms | high TTFT p50, ms | each, ms | within bound |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{row('preemption')}\n{row('no_preemption')}\n\n"
        f"Target: high TTFT p50 <= prefill + 2 decode steps + 100 ms with preemption: {verdict}.\n"
    )

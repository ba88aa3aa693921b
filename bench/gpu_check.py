"""The engine on a GPU: concurrency 1, 16 and 64 in bfloat16, sized to finish in a few minutes.

The device machine cannot receive the 540 MB converted model, so by default this builds a model with
SmolLM2-135M-Instruct's exact architecture and random weights: throughput and latency depend on the
shapes, not on the weight values. With --model-dir it uses a real model directory instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for src in ("libs/common/src", "services/model-worker/src"):
    sys.path.insert(0, str(ROOT / src))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.measure import RequestTiming, now, summarize  # noqa: E402
from llmserve.model_worker.batching_engine import BatchingEngine  # noqa: E402
from llmserve.model_worker.engine import EngineRequest  # noqa: E402
from llmserve.model_worker.sampling import SamplingConfig  # noqa: E402

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)


class _IdTokenizer:
    """Enough of a tokenizer for the engine when prompts are given as ids: text is the ids themselves."""

    pad_token_id = 2
    eos_token_id = 2

    def decode(self, ids, **_kwargs) -> str:
        return " ".join(map(str, ids))


async def wave(engine: BatchingEngine, prompts: list[list[int]], new_tokens: int, concurrency: int) -> list[RequestTiming]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: list[int]) -> RequestTiming:
        async with gate:
            t = RequestTiming(now())
            async for out in engine.submit(EngineRequest(f"g{concurrency}-{i}", tuple(prompt), SamplingConfig(max_tokens=new_tokens), ignore_eos=True)):
                if out.token_ids:
                    t.arrivals.append(now())
                    t.tokens += len(out.token_ids)
            return t

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


async def main_async(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device=device, dtype=dtype).eval()
    engine = BatchingEngine(model, _IdTokenizer(), frozenset({2}), device, max_running=max(args.concurrency), max_kv_tokens=1 << 20)
    await engine.start()
    rows = []
    try:
        await wave(engine, [[5] * 40], 4, 1)
        for c in args.concurrency:
            prompts = [[(7 * i + j) % 49000 + 10 for j in range(40 + i % 24)] for i in range(max(c, 4))]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            started = now()
            timings = await wave(engine, prompts, args.new_tokens, c)
            wall = now() - started
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
            rows.append(summarize(f"engine on {device.type} {args.dtype}, concurrency {c}", timings, wall, peak, concurrency=c))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        await engine.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    started = time.time()
    rows = asyncio.run(main_async(args))
    print("\n| scenario | tokens/s | ttft p50 ms | ttft p99 ms | itl p50 ms | itl p99 ms | peak GPU MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['tokens_per_s']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['itl_p50_ms']} | {r['itl_p99_ms']} | {r['peak_rss_mb']} |")
    print(f"\n(total {time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

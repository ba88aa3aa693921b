"""One load script for every OpenAI-compatible server: streamed chat completions at a fixed concurrency.

Each request asks for exactly `new_tokens` tokens, greedy (temperature 0, `repeat_penalty` 1.0 for
llama.cpp's server, which applies one by default), past end-of-sequence (`ignore_eos`, which both
llama-server and llmserve accept), so every server does the same work. Time to first token is the
arrival of the first chunk with text.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from bench.measure import RequestTiming, now

# llmserve serves it by this name; llama-server serves its one model whatever the name says.
MODEL = "SmolLM2-135M-Instruct"


def _body(question: str, new_tokens: int, extra: dict) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


# Each server's own fields for the same work: no repetition penalty on either side (llmserve applies
# none unless asked; llama-server's field turns its own off). llmserve refuses fields it does not know.
SERVER_FIELDS = {"llama-server": {"repeat_penalty": 1.0}, "llmserve": {}}


async def one_request(
    client: httpx.AsyncClient, base_url: str, question: str, new_tokens: int, extra: dict, timing: RequestTiming | None = None
) -> RequestTiming:
    """One streamed request; its arrivals go into `timing` as they come (a new one when not given)."""
    timing = timing or RequestTiming(now())
    pieces = 0
    async with client.stream("POST", f"{base_url}/v1/chat/completions", json=_body(question, new_tokens, extra)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base_url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    timing.arrivals.append(now())
                    pieces += 1
            usage = event.get("usage")
            if usage and usage.get("completion_tokens"):
                timing.tokens = int(usage["completion_tokens"])
    if not timing.tokens:
        timing.tokens = pieces
    if not timing.arrivals:
        raise RuntimeError(f"{base_url}: a request produced no text")
    return timing


async def wave(base_url: str, questions: list[str], new_tokens: int, concurrency: int, extra: dict | None = None) -> list[RequestTiming]:
    """All questions, at most `concurrency` in flight; timings in the order of `questions`. `extra`: the
    server's own fields (SERVER_FIELDS)."""
    gate = asyncio.Semaphore(concurrency)
    # A connection per request: llama-server's HTTP library closes idle keep-alive connections, and a
    # request sent on one it was just closing fails with "server disconnected" (seen in about one run in
    # three). Both servers pay the same loopback handshake.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def gated(question: str) -> RequestTiming:
            async with gate:
                return await one_request(client, base_url, question, new_tokens, extra or {})

        return await asyncio.gather(*(gated(q) for q in questions))

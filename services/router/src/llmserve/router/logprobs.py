"""Log probabilities in OpenAI's two shapes: chat's `logprobs.content` and completions' parallel lists."""

from __future__ import annotations

from collections.abc import Iterable

from llmserve.v1 import common_pb2


def _token(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(entries: Iterable[common_pb2.TokenLogprob]) -> dict:
    """`choices[i].logprobs` of a chat completion (or of one streamed chunk)."""
    return {
        "content": [
            {**_token(e.token, e.logprob), "top_logprobs": [_token(t.token, t.logprob) for t in e.top_logprobs]} for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: Iterable[common_pb2.TokenLogprob], text_offset: int = 0) -> dict:
    """`choices[i].logprobs` of a text completion; `text_offset` is where the first token's text starts."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.token)
        out["token_logprobs"].append(e.logprob)
        out["top_logprobs"].append({t.token: t.logprob for t in e.top_logprobs})
        out["text_offset"].append(text_offset)
        text_offset += len(e.token)
    return out

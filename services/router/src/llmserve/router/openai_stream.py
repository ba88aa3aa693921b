"""OpenAI's answer shapes, built from TokenChunks: whole answers and server-sent-event streams, one
choice or several (n > 1: one job per choice, their chunks interleaved as they come)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from llmserve.common.errors import ServiceError
from llmserve.router.logprobs import chat_logprobs, completion_logprobs
from llmserve.router.openai_protocol import FINISH_REASONS, Kind, created, error_body, usage_dict
from llmserve.router.tools import ToolCallParser
from llmserve.v1 import common_pb2, events_pb2

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
    504: "timeout",
}


def service_error_body(exc: ServiceError) -> dict:
    # OpenAI's code for every key problem is invalid_api_key (clients match on it).
    code = "invalid_api_key" if exc.http_status == 401 else exc.code_name
    return error_body(exc.message, _ERROR_TYPES.get(exc.http_status, "server_error"), exc.param, code)


def sse(payload: dict, event_id: int | None = None) -> bytes:
    """One server-sent event; with event_id, an `id:` field a reconnecting client sends back as Last-Event-ID."""
    data = f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
    return (data if event_id is None else f"id: {event_id}\n{data}").encode()


def call_dict(call: common_pb2.ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


@dataclass
class Answer:
    """A whole (non-streamed) answer of one choice: its text, final chunk and every token's logprobs."""

    text: str
    final: events_pb2.TokenChunk
    logprobs: list[common_pb2.TokenLogprob] = field(default_factory=list)


def whole_response(kind: Kind, job: events_pb2.Job, answers: list[Answer]) -> dict:
    """A chat.completion or text_completion object; usage counts the prompt once and every choice's tokens."""
    choices = [_whole_choice(kind, job, answer, i) for i, answer in enumerate(answers)]
    return {
        "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + job.request_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created(),
        "model": job.model,
        "choices": choices,
        "usage": usage_dict(total_usage([a.final.usage for a in answers])),
        "system_fingerprint": f"{job.model}-v{answers[0].final.model_version}",
    }


def total_usage(usages: list[common_pb2.Usage]) -> common_pb2.Usage:
    prompt = usages[0].prompt_tokens if usages else 0
    completion = sum(u.completion_tokens for u in usages)
    return common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _whole_choice(kind: Kind, job: events_pb2.Job, answer: Answer, index: int) -> dict:
    finish = FINISH_REASONS.get(answer.final.finish_reason, "stop")
    if kind != "chat":
        logprobs = completion_logprobs(answer.logprobs) if job.sampling.logprobs else None
        return {"index": index, "text": answer.text, "finish_reason": finish, "logprobs": logprobs}
    logprobs = chat_logprobs(answer.logprobs) if job.sampling.logprobs else None
    message: dict = {"role": "assistant", "content": answer.text}
    if job.tools:
        said, calls = ToolCallParser.split(answer.text)
        if calls:
            message = {"role": "assistant", "content": said if said.strip() else None, "tool_calls": [call_dict(c) for c in calls]}
            finish = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}


class _ChoiceStream:
    """One choice's pieces of a stream. Logprobs of tokens whose text is held back go with the next
    piece that has text; in chat with tools, text outside calls goes out as content and each call
    whole once its closing tag arrived."""

    def __init__(self, kind: Kind, job: events_pb2.Job, index: int) -> None:
        self.is_chat = kind == "chat"
        self.index = index
        self._logprobs = job.sampling.logprobs
        self._pending: list[common_pb2.TokenLogprob] = []
        self._sent_chars = 0
        self._calls = ToolCallParser() if self.is_chat and job.tools else None
        self.usage: common_pb2.Usage | None = None

    def opening(self) -> dict:
        return self._piece("", None, role=True)

    def pieces(self, chunk: events_pb2.TokenChunk) -> list[dict]:
        out = []
        self._pending.extend(chunk.logprobs)
        text = chunk.text
        if self._calls is not None:
            text, found = self._calls.feed(text)
            if chunk.final:
                text += self._calls.finish()
            if found:
                first = len(self._calls.calls) - len(found)
                deltas = [{"index": first + i, **call_dict(c)} for i, c in enumerate(found)]
                out.append({"index": self.index, "delta": {"tool_calls": deltas}, "finish_reason": None, "logprobs": None})
        if text:
            out.append(self._piece(text, None))
        if chunk.final:
            self.usage = chunk.usage
            finish = "tool_calls" if self._calls is not None and self._calls.calls else FINISH_REASONS.get(chunk.finish_reason, "stop")
            out.append(self._piece(None if self.is_chat else "", finish))
        return out

    def _piece(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        logprobs = None
        if self._logprobs and not role:
            logprobs = chat_logprobs(self._pending) if self.is_chat else completion_logprobs(self._pending, self._sent_chars)
            self._pending.clear()
        self._sent_chars += len(text or "")
        if not self.is_chat:
            return {"index": self.index, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        delta: dict = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": self.index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}


async def sse_events(
    kind: Kind, job: events_pb2.Job, first: tuple[int, events_pb2.TokenChunk], rest: AsyncIterator[tuple[int, events_pb2.TokenChunk]],
    n: int, include_usage: bool, resume_from: int | None = None,
) -> AsyncIterator[bytes]:
    """The SSE stream of n choices, from their interleaved chunks (the first already in hand).

    With one choice, the last event of each piece of the answer carries the piece's index as its
    `id`; a client re-attaching with Last-Event-ID gets the pieces from `resume_from` on (the
    earlier ones still pass through the choice's state: tool calls, offsets), without the opening
    event it had with its first response."""
    is_chat = kind == "chat"
    base = {
        "id": ("chatcmpl-" if is_chat else "cmpl-") + job.request_id,
        "object": "chat.completion.chunk" if is_chat else "text_completion",
        "created": created(),
        "model": job.model,
    }
    choices = [_ChoiceStream(kind, job, i) for i in range(n)]
    if is_chat and resume_from is None:
        for choice in choices:
            yield sse({**base, "choices": [choice.opening()]})
    item = first
    finished = 0
    try:
        while True:
            index, chunk = item
            pieces = choices[index].pieces(chunk)
            if n == 1 and resume_from is not None and chunk.index < resume_from:
                pieces = []
            for i, piece in enumerate(pieces):
                yield sse({**base, "choices": [piece]}, chunk.index if n == 1 and i == len(pieces) - 1 else None)
            if chunk.final:
                finished += 1
                if finished == n:
                    break
            item = await anext(rest)
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage_dict(total_usage([c.usage for c in choices if c.usage is not None]))})
    except ServiceError as exc:
        # Headers are gone: the error travels as an event, the way OpenAI's API reports one mid-stream.
        yield sse(service_error_body(exc))
    yield b"data: [DONE]\n\n"


async def interleave(streams: list[AsyncGenerator[events_pb2.TokenChunk, None]]) -> AsyncGenerator[tuple[int, events_pb2.TokenChunk], None]:
    """(choice index, chunk) from every stream as chunks come, in order within each; the first error
    ends it. Closing it closes every stream, which cancels their jobs."""
    if len(streams) == 1:
        try:
            async for chunk in streams[0]:
                yield 0, chunk
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, events_pb2.TokenChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[events_pb2.TokenChunk, None]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for stream in streams:
            with contextlib.suppress(BaseException):
                await stream.aclose()

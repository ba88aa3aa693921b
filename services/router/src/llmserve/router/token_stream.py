"""The router's end of one request's token subject: chunks in order, each exactly once."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmserve.common.errors import ServiceError
from llmserve.v1 import events_pb2


class TokenStream:
    """Subscribed before the job is submitted, so no chunk can arrive unheard.

    Chunks are re-ordered by sequence number; repeats (seq already delivered) are dropped, so a
    duplicated message never reaches the client twice.
    """

    def __init__(self, nc: NATS, subject: str) -> None:
        self._nc = nc
        self._subject = subject
        self._queue: asyncio.Queue[events_pb2.TokenChunk] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._early: dict[int, events_pb2.TokenChunk] = {}
        self.next_seq = 0

    async def open(self) -> TokenStream:
        async def _on_chunk(msg: Msg) -> None:
            try:
                self._queue.put_nowait(events_pb2.TokenChunk.FromString(msg.data))
            except Exception:
                pass  # not a TokenChunk: ignore rather than kill the stream

        # No flush needed: NATS handles one connection's protocol messages in order, so this SUB
        # reaches the server before the submission that follows it on the same connection.
        self._sub = await self._nc.subscribe(self._subject, cb=_on_chunk)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass  # connection closing: the server drops the subscription anyway
            self._sub = None

    async def next(self, timeout_s: float) -> events_pb2.TokenChunk:
        """The next chunk in sequence; UNAVAILABLE when none arrives within timeout_s."""
        while self.next_seq not in self._early:
            try:
                chunk = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                raise ServiceError.unavailable(f"no output from the worker for {timeout_s:.0f} s") from None
            if chunk.seq >= self.next_seq:
                self._early[chunk.seq] = chunk
        chunk = self._early.pop(self.next_seq)
        self.next_seq += 1
        return chunk

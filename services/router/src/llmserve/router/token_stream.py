"""The router's end of one request's token subject: chunks in order, each exactly once, one attempt at a time."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmserve.v1 import events_pb2


class StreamStalled(Exception):
    """No chunk arrived in time."""


class WorkerLost(Exception):
    """The worker running this attempt was declared dead or handed the request back."""

    def __init__(self, worker_id: str, reason: str) -> None:
        super().__init__(f"worker {worker_id}: {reason}")
        self.worker_id = worker_id


class TokenStream:
    """Subscribed before the job is submitted, so no chunk can arrive unheard.

    Chunks are re-ordered by sequence number within the current attempt; repeats are dropped, and so
    are chunks of earlier attempts (a worker the router gave up on may still be talking).
    """

    def __init__(self, nc: NATS, subject: str) -> None:
        self._nc = nc
        self._subject = subject
        self._queue: asyncio.Queue[events_pb2.TokenChunk | WorkerLost] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._early: dict[int, events_pb2.TokenChunk] = {}
        self.attempt = 0
        self.next_seq = 0
        # The worker running the current attempt, once its first chunk said so.
        self.worker_id = ""

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

    def new_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.next_seq = 0
        self.worker_id = ""
        self._early.clear()

    def interrupt(self, worker_id: str, reason: str) -> None:
        """Wakes the reader with WorkerLost if worker_id runs the current attempt (monitor said it died)."""
        self._queue.put_nowait(WorkerLost(worker_id, reason))

    async def next(self, timeout_s: float) -> events_pb2.TokenChunk:
        """The next chunk of the current attempt; StreamStalled after timeout_s of silence."""
        while self.next_seq not in self._early:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                raise StreamStalled(f"no output for {timeout_s:.1f} s") from None
            if isinstance(item, WorkerLost):
                if item.worker_id and item.worker_id == self.worker_id:
                    raise item
                continue  # about a worker of an earlier attempt, or of none
            if item.attempt != self.attempt or item.seq < self.next_seq:
                continue
            if item.handed_back:
                raise WorkerLost(item.worker_id, "handed the request back")
            self.worker_id = self.worker_id or item.worker_id
            self._early[item.seq] = item
        chunk = self._early.pop(self.next_seq)
        self.next_seq += 1
        return chunk

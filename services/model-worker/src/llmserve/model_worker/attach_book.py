"""What a worker published for each request it runs (and ran lately), for routers that re-attach.

A router that dies mid-stream leaves its request running on the worker, which keeps publishing
chunks nobody reads. When the client reconnects to another router and asks for the same request id,
that router asks every worker who holds it (AttachRequest on `llm.attach`); the holder answers with
the job and every chunk of its attempt so far, and the new router relays from there while the live
chunks keep coming on the request's token subject.

Entries of finished requests are kept `retention_s` (a client reconnecting after the end still gets
its answer), and at most `max_finished` of them; running requests are always kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from llmserve.v1 import events_pb2


@dataclass
class _Entry:
    job: events_pb2.Job
    chunks: list[events_pb2.TokenChunk] = field(default_factory=list)
    # Monotonic time of the final chunk; None while running.
    finished_at: float | None = None


class AttachBook:
    def __init__(self, retention_s: float = 120.0, max_finished: int = 4096) -> None:
        self._retention_s = retention_s
        self._max_finished = max_finished
        self._entries: dict[str, _Entry] = {}
        # Finished requests, oldest first (their order of finishing).
        self._finished: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, job: events_pb2.Job, chunk: events_pb2.TokenChunk) -> None:
        """Notes a chunk published for `job` (a new attempt of a request replaces the earlier one's)."""
        entry = self._entries.get(job.request_id)
        if entry is None or entry.job.attempt != job.attempt:
            if entry is not None and entry.job.attempt > job.attempt:
                return  # a late chunk of an attempt this worker already moved past
            entry = self._entries[job.request_id] = _Entry(job)
            self._finished.pop(job.request_id, None)
        entry.chunks.append(chunk)
        if chunk.final or chunk.handed_back:
            entry.finished_at = time.monotonic()
            self._finished[job.request_id] = None
            self._forget_old()

    def ended(self, job: events_pb2.Job) -> None:
        """The job's task ended: an entry left without a final chunk (the task was cancelled) starts
        its retention now."""
        entry = self._entries.get(job.request_id)
        if entry is not None and entry.job.attempt == job.attempt and entry.finished_at is None:
            entry.finished_at = time.monotonic()
            self._finished[job.request_id] = None
            self._forget_old()

    def reply(self, request_id: str) -> events_pb2.AttachReply | None:
        """The job and its chunks so far, or None when this worker does not hold the request."""
        self._forget_old()
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        return events_pb2.AttachReply(job=entry.job, chunks=entry.chunks)

    def _forget_old(self) -> None:
        now = time.monotonic()
        while self._finished:
            oldest = next(iter(self._finished))
            entry = self._entries[oldest]
            if len(self._finished) <= self._max_finished and now - (entry.finished_at or now) < self._retention_s:
                break
            del self._finished[oldest]
            del self._entries[oldest]

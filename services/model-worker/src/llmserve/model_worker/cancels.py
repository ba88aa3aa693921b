"""Cancels remembered for a while, so that one arriving before its job runs still stops it.

A router cancels a request (its client went away, its deadline passed, it migrated) by a broadcast
that every worker hears once. The worker running the attempt stops it in its engine; but a cancel
can come while the job still waits in the queue, or in the moment between a worker taking the job
and its engine knowing it (the "taken" chunk, a suspect's trial, tokenizing). Forgotten, such a cancel
would let the job run to its last token for a client that is gone. Each worker therefore keeps the
cancels of the last KEEP_S seconds and checks them as a job is about to start.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from llmserve.v1 import events_pb2

# Longer than jobs wait in the queue in practice.
KEEP_S = 300.0


class RecentCancels:
    def __init__(self, keep_s: float = KEEP_S) -> None:
        self._keep_s = keep_s
        # request id -> (highest attempt cancelled, when), oldest first.
        self._cancels: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def record(self, cancel: events_pb2.Cancel) -> None:
        now = time.monotonic()
        before = self._cancels.pop(cancel.request_id, (0, now))
        self._cancels[cancel.request_id] = (max(before[0], cancel.max_attempt), now)
        while self._cancels:
            oldest = next(iter(self._cancels.values()))
            if now - oldest[1] <= self._keep_s:
                break
            self._cancels.popitem(last=False)

    def covers(self, request_id: str, attempt: int) -> bool:
        """Whether this attempt of the request was cancelled (a later attempt, after a migration, is not)."""
        found = self._cancels.get(request_id)
        return found is not None and attempt <= found[0] and time.monotonic() - found[1] <= self._keep_s

    def __len__(self) -> int:
        return len(self._cancels)

"""Jobs handed straight to a worker while the job queue has no stream leader.

When a NATS server of a cluster dies, every JetStream stream it led is without a leader until the
others elect one: nats-server's Raft election timeout is 4 to 9 s, and meanwhile nothing can be queued.
The rest of NATS works (core subjects are served by every live server). A job the queue refused with
"no responders" was surely not stored, so the scheduler may hand it to a live worker of its version
that has a free slot (by its last heartbeat), over core NATS, instead of making the client wait out
the election. The worker takes it only if it still has a free slot, and says so (`DirectJobReply`).
The same goes, before any publish, for a job whose consumer is known to have no leader while the
stream has one (leaders.py): the stream would store it, but nothing would hand it out until that
consumer's election.

Exactly once: JetStream's duplicate window cannot see a job that never reached the stream, so a
router that resubmits the same attempt (its first submission's reply was lost) could have it queued
and run a second time. A hand-off therefore first sets a Redis marker for the attempt (SET NX), and a
submission that is not fresh (its job was made more than FRESH_S ago: a resubmission, or a slow one)
is checked against the markers before it is queued. A second hand-off of the same attempt is refused
by the marker. Without Redis, no job is handed directly: the client waits for the queue as before.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.aio.client import Client as NATS
from redis.asyncio import Redis

from llmserve.common.keys import RedisKeys
from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import DIRECT_UNTIL_HEADER, Subjects, attempt_key
from llmserve.scheduler import metrics
from llmserve.v1 import events_pb2

log = structlog.get_logger()

# A worker takes a handed job only until this long after it was sent (the DIRECT_UNTIL_HEADER), and
# the scheduler waits longer than that for its answer: a worker that was stopped and resumes late
# declines the job, so a hand-off that timed out never runs there while another worker runs it too
# (given clocks within ASK_TIMEOUT_S - ACCEPT_WITHIN_S of each other).
ACCEPT_WITHIN_S = 0.4
_ASK_TIMEOUT_S = 1.0
# Bound on each Redis call of this path: it must never hold a submission up for long.
_REDIS_TIMEOUT_S = 0.5
# A job made longer ago than this (Job.submitted_at) may be a resubmission: checked against the markers.
FRESH_S = 1.0
# How long a marker lives: past any router's retries of one submission.
_MARKER_TTL_S = 600


class DirectHandoff:
    def __init__(self, nc: NATS, subjects: Subjects, liveness: LivenessTable, redis: Redis, keys: RedisKeys) -> None:
        self._nc = nc
        self._subjects = subjects
        self._liveness = liveness
        self._redis = redis
        self._keys = keys

    async def handed_before(self, job: events_pb2.Job) -> bool:
        """Whether this attempt was already handed to a worker directly (checked for jobs that are not
        fresh only; False when Redis cannot say, as nothing is handed directly without it)."""
        if time.time() - job.submitted_at < FRESH_S:
            return False
        try:
            key = self._keys.handed_directly(attempt_key(job.request_id, job.attempt))
            return bool(await asyncio.wait_for(self._redis.exists(key), _REDIS_TIMEOUT_S))
        except Exception as exc:
            log.warning("direct_marker_unreadable", error=f"{type(exc).__name__}: {exc}")
            return False

    async def hand_off(self, job: events_pb2.Job, headers: dict[str, str]) -> bool:
        """Hands the job to a live worker of its version with a free slot; True once one took it (or
        this attempt was handed before), False when none could."""
        workers = sorted(
            (b for b in self._liveness.live_workers(job.model, job.model_version) if b.slots_total > b.slots_busy),
            key=lambda b: b.slots_total - b.slots_busy,
            reverse=True,
        )
        if not workers:
            return False
        key = self._keys.handed_directly(attempt_key(job.request_id, job.attempt))
        try:
            first = await asyncio.wait_for(self._redis.set(key, b"1", nx=True, ex=_MARKER_TTL_S), _REDIS_TIMEOUT_S)
        except Exception as exc:
            log.warning("direct_marker_unwritable", error=f"{type(exc).__name__}: {exc}")
            return False
        if not first:
            log.info("job_handed_before")
            return True
        data = job.SerializeToString()
        for beat in workers:
            subject = self._subjects.direct(job.model, job.model_version, beat.instance_id)
            until = {DIRECT_UNTIL_HEADER: f"{time.time() + ACCEPT_WITHIN_S:.6f}"}
            try:
                msg = await self._nc.request(subject, data, timeout=_ASK_TIMEOUT_S, headers={**headers, **until})
                taken = events_pb2.DirectJobReply.FromString(msg.data).taken
            except Exception as exc:  # gone, stopped or slow: ask the next one
                log.info("direct_handoff_unanswered", worker=beat.instance_id, error=type(exc).__name__)
                continue
            if taken:
                log.info("job_handed_directly", worker=beat.instance_id)
                metrics.DIRECT_HANDOFFS.labels(model=job.model).inc()
                return True
        # Nobody took it: the marker goes, so that the job may be queued once the queue is back.
        try:
            await asyncio.wait_for(self._redis.delete(key), _REDIS_TIMEOUT_S)
        except Exception as exc:
            log.warning("direct_marker_left", error=f"{type(exc).__name__}: {exc}")
        return False

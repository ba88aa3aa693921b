"""The job queues on JetStream: one bounded stream per model, one subject per version and priority.

Publishing is where admission becomes exact: a stream with discard=new and max_msgs=Q refuses the
(Q+1)-th waiting job itself, so several schedulers sharing one queue never overshoot its bound.
The queue's depth and drain rate are sampled from the stream's state; the drain rate turns a
"queue full" refusal into a Retry-After estimate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from llmserve.common.errors import ServiceError
from llmserve.common.job_client import QUEUE_UNAVAILABLE
from llmserve.common.natsio import ensure_jobs_stream
from llmserve.common.subjects import Subjects, attempt_key
from llmserve.scheduler import metrics
from llmserve.v1 import events_pb2

log = structlog.get_logger()

# JetStream's error codes for a publish refused by a full stream (discard=new).
_STREAM_FULL_CODES = {10077, 10047}
# Retry-After bounds, in seconds.
MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0
# Publishing a job: each try's timeout, and how long a queue without a stream leader is retried (under
# the router's submit timeout, which then retries itself).
_PUBLISH_TIMEOUT_S = 1.0
_PUBLISH_RETRY_S = 4.0
_PUBLISH_RETRY_WAIT_S = 0.2
# Weight of the newest sample in the drain-rate average.
_RATE_SMOOTHING = 0.3


@dataclass
class QueueState:
    """What the scheduler last saw of one model's queue."""

    depth: int = 0
    # Waiting jobs by subject (version and priority).
    by_subject: dict[str, int] = field(default_factory=dict)
    # Jobs that ever left the queue (taken by a worker or expired), at the last sample.
    removed: int = -1
    sampled_at: float = 0.0
    # Jobs leaving the queue per second, smoothed; None until two samples exist.
    drain_rate: float | None = None

    def observe(self, depth: int, last_seq: int, by_subject: dict[str, int], now: float) -> None:
        removed = last_seq - depth
        if self.removed >= 0 and now > self.sampled_at and removed >= self.removed:
            rate = (removed - self.removed) / (now - self.sampled_at)
            self.drain_rate = rate if self.drain_rate is None else _RATE_SMOOTHING * rate + (1 - _RATE_SMOOTHING) * self.drain_rate
        self.depth, self.removed, self.sampled_at, self.by_subject = depth, removed, now, by_subject

    def retry_after_s(self) -> float:
        """How long until the queue has room again at the current drain rate, within [1 s, 60 s]."""
        if not self.drain_rate:
            return MAX_RETRY_AFTER_S if self.drain_rate == 0.0 and self.depth else 5.0
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(1.0 / self.drain_rate)))


class _NothingPublished(Exception):
    """JetStream's API did not answer the stream check, so the job was not published (and not stored)."""


class JobQueues:
    def __init__(self, nc: NATS, subjects: Subjects, max_queued_per_model: int, replicas: int = 1) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._max_queued = max_queued_per_model
        self._replicas = replicas
        # Model -> whether its stream takes per-message TTLs; a model is here once its stream exists.
        self._streams: dict[str, bool] = {}
        # The same, for streams known before a reconnect and not checked since (see forget_streams).
        self._unchecked: dict[str, bool] = {}
        self.states: dict[str, QueueState] = {}
        # (stream, consumer) -> whether that consumer is known to have no leader (leaders.py, on a cluster).
        self.consumer_leaderless: Callable[[str, str], bool] = lambda stream, consumer: False

    @property
    def total_queued(self) -> int:
        return sum(state.depth for state in self.states.values())

    async def ensure(self, model: str) -> bool:
        if model not in self._streams:
            self._streams[model] = await ensure_jobs_stream(self._nc, self._subjects, model, self._max_queued, self._replicas, _PUBLISH_TIMEOUT_S)
            self._unchecked.pop(model, None)
            self.states.setdefault(model, QueueState())
        return self._streams[model]

    async def _stream_for(self, model: str) -> bool:
        """ensure(), except for a stream known before a reconnect: published to as it was, unchecked.
        A reconnect often means a server of the cluster died, and JetStream's API may have no meta
        leader for seconds while the stream itself lives on; a publish that finds no stream is followed
        by the check (publish() drops the model from _unchecked)."""
        if model in self._unchecked:
            return self._unchecked[model]
        try:
            return await self.ensure(model)
        except (TimeoutError, NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise _NothingPublished from exc

    def forget_streams(self) -> None:
        """After a NATS reconnect the server may have lost its streams: check them again on next use."""
        self._unchecked.update(self._streams)
        self._streams.clear()

    async def publish(
        self, job: events_pb2.Job, trace_headers: dict[str, str] | None = None, worker: str | None = None,
        hand_off: Callable[[events_pb2.Job, dict[str, str]], Awaitable[bool]] | None = None,
    ) -> bool:
        """Queues the job (on `worker`'s own subject when given: see dispatch.py); returns False when
        JetStream dropped it as a duplicate of an earlier submission. `trace_headers` (the scheduler's
        span) travel with the job to the worker that takes it. While the stream has no leader and
        every try so far surely did not store the job, `hand_off` may run it elsewhere (direct.py):
        True from it ends the publish as queued. So may it, first, when the consumer that would hand
        the job out is known to have no leader (the job would wait for its election)."""
        if worker:
            subject = self._subjects.jobs_for(job.model, job.model_version, job.priority, worker)
            consumer = self._subjects.jobs_for_consumer(job.model, job.model_version, job.priority, worker)
        else:
            subject = self._subjects.jobs(job.model, job.model_version, job.priority)
            consumer = self._subjects.jobs_consumer(job.model, job.model_version, job.priority)
        if hand_off is not None and self.consumer_leaderless(self._subjects.jobs_stream(job.model), consumer):
            if await hand_off(job, trace_headers or {}):
                return True
        give_up = time.monotonic() + _PUBLISH_RETRY_S
        recreated = False
        # Whether an earlier try may have stored the job after all (it timed out rather than being refused).
        maybe_stored = False
        while True:
            try:
                msg_ttl = await self._stream_for(job.model)
                ack = await self._js.publish(
                    subject,
                    job.SerializeToString(),
                    timeout=_PUBLISH_TIMEOUT_S,
                    headers={**(trace_headers or {}), **self._headers(job, msg_ttl)},
                )
                if job.model in self._unchecked:
                    self._streams[job.model] = self._unchecked.pop(job.model)
                break
            except NotFoundError:
                # The stream vanished (server restarted with fresh storage, or deleted): make it again.
                self._streams.pop(job.model, None)
                self._unchecked.pop(job.model, None)
                if recreated:
                    raise
                recreated = True
            except (TimeoutError, NatsTimeoutError, NoRespondersError, NoStreamResponseError, APIError, _NothingPublished) as exc:
                if isinstance(exc, APIError) and exc.err_code in _STREAM_FULL_CODES:
                    state = self.states.setdefault(job.model, QueueState())
                    raise ServiceError.exhausted(
                        f"the queue of model {job.model} is full ({self._max_queued} jobs); retry later",
                        retry_after_s=state.retry_after_s(),
                        reason="queue_full",
                    ) from exc
                if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError):
                    raise
                # No stream leader for a moment (a NATS server of a cluster died): JetStream's duplicate
                # window makes publishing again harmless if the first one did land. "No responders"
                # means nothing stored it: while every try says so, the job may run elsewhere.
                refused = isinstance(exc, (NoRespondersError, NoStreamResponseError, _NothingPublished))
                maybe_stored = maybe_stored or not refused
                if refused:
                    self._unchecked.pop(job.model, None)  # no stream answered: check it before the next try
                if refused and not maybe_stored and hand_off is not None and await hand_off(job, trace_headers or {}):
                    return True
                if time.monotonic() >= give_up:
                    raise ServiceError(events_pb2.ERROR_CODE_UNAVAILABLE, "the job queue is not answering; retry", reason=QUEUE_UNAVAILABLE) from exc
                log.info("job_publish_retrying", model=job.model, error=type(exc).__name__)
                await asyncio.sleep(_PUBLISH_RETRY_WAIT_S)
        if ack.duplicate:
            return False
        # The level lets workers pull that queue without first asking the (usually empty) higher ones;
        # the worker named pulls its own subject.
        ring = f"{job.priority} {worker}" if worker else str(job.priority)
        await self._nc.publish(self._subjects.doorbell(job.model, job.model_version), ring.encode())
        return True

    def _headers(self, job: events_pb2.Job, msg_ttl: bool) -> dict[str, str]:
        headers = {"Nats-Msg-Id": attempt_key(job.request_id, job.attempt)}
        if msg_ttl and job.deadline:
            # JetStream deletes the job when its deadline passes (whole seconds, at least 1), so an
            # expired job stops taking room in the queue; workers also drop any they still get.
            headers["Nats-TTL"] = f"{max(1, math.ceil(job.deadline - time.time()))}s"
        return headers

    async def refresh(self, models: list[str]) -> None:
        """Samples each model's queue: depth per version and priority, and how fast it drains."""
        for model in models:
            try:
                info = await self._js.stream_info(self._subjects.jobs_stream(model), subjects_filter=self._subjects.jobs_model(model))
            except NotFoundError:
                continue  # nothing queued for this model yet
            except Exception:  # reconnecting: keep the last figures
                return
            state = self.states.setdefault(model, QueueState())
            by_subject = dict(info.state.subjects or {})
            emptied = set(state.by_subject) - set(by_subject)
            state.observe(info.state.messages, info.state.last_seq, by_subject, time.monotonic())
            # Depth per version and level, a worker's own subjects counted with the shared one.
            depths: dict[tuple[int, int], int] = {}
            for subject in emptied | set(by_subject):
                parsed = self._subjects.parse_jobs(subject)
                if parsed is not None:
                    version, priority, _ = parsed
                    depths[version, priority] = depths.get((version, priority), 0) + by_subject.get(subject, 0)
            for (version, priority), depth in depths.items():
                metrics.QUEUE_DEPTH.labels(model=model, version=str(version), priority=str(priority)).set(depth)
        metrics.QUEUED_JOBS.set(self.total_queued)

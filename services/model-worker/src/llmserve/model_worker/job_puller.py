"""Pulling jobs from the JetStream work queue, highest priority first, without waiting on empty queues.

One durable pull consumer per (model, version, priority) is shared by every worker of that version,
so a job goes to exactly one worker. A pull asks for at most as many jobs as the worker has free
slots, with no_wait, so an empty high-priority queue costs one round trip, not a timeout.

A puller started with `on_ring` listens to the scheduler's doorbell, which carries the level of the
job just queued, and then skips levels it found empty until a doorbell names them again: a job costs
one round trip instead of one per level above it. The hint is recorded before `on_ring` wakes the
caller, so a pull that follows a doorbell always asks its level. Doorbells are core NATS and may be
lost, so every level is asked again at least every `_FULL_SWEEP_S`.

Cache-aware dispatch (scheduler/dispatch.py) queues some jobs on a worker's own subject; a worker
pulls its own subject of a level before the shared one (a doorbell naming it says when). Another
worker's own subject is pulled by anyone once a job waited there `preferred_wait_s` (its owner is
busy, stopped or dead): such jobs are found from doorbells naming other workers and from a sweep of
the stream's subjects every `_FULL_SWEEP_S`, and are taken before the shared queue of their level.

Dispatch order is strict by priority, with aging: a job that has waited `aging_step_s` seconds
counts one level higher, two steps two levels, and so on (up to critical), so a low-priority job
is never starved by a steady stream of higher ones. The age of each level's oldest job is sampled
at most every `_AGING_PROBE_S`, in the background (only when two or more levels have jobs waiting
does it read their oldest jobs).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from llmserve.common.natsio import ensure_jobs_stream
from llmserve.common.subjects import PRIORITIES_HIGH_FIRST, Subjects
from llmserve.v1 import common_pb2, events_pb2

log = structlog.get_logger()

# Status codes JetStream answers a pull with when it has nothing (more) to give.
_EMPTY_STATUSES = {"404", "408", "409"}
# Longest time the aged dispatch order is reused before the queue heads are sampled again.
_AGING_PROBE_S = 1.0
# A version's consumers are deleted by JetStream after this long without a pull.
_CONSUMER_IDLE_S = 24 * 3600.0
# Queue bound a worker uses when it creates a model's queue before any scheduler did.
_DEFAULT_MAX_QUEUED = 1000
# Longest time a level found empty is skipped without a doorbell naming it.
_FULL_SWEEP_S = 1.0
# How long a worker starting keeps trying to make its consumers while JetStream does not answer.
_CONSUMER_SETUP_S = 60.0


@dataclass(frozen=True)
class _Foreign:
    """Another worker's own subject of one level, known to hold jobs since `since` (monotonic)."""

    level: int
    owner: str
    since: float


def aged_order(head_ages: dict[int, float], aging_step_s: float) -> list[int]:
    """Priority levels in dispatch order, given how long each level's oldest job has waited."""

    def rank(level: int) -> tuple[int, int]:
        age = head_ages.get(level)
        if age is None or aging_step_s <= 0:
            return level, level
        return min(common_pb2.PRIORITY_CRITICAL, level + int(age // aging_step_s)), level

    return sorted(PRIORITIES_HIGH_FIRST, key=rank, reverse=True)


class JobPuller:
    def __init__(
        self, nc: NATS, subjects: Subjects, model: str, version: int, ack_wait_s: float = 30.0, aging_step_s: float = 0.0,
        instance_id: str = "", preferred_wait_s: float = 0.5, stream_replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._stream = subjects.jobs_stream(model)
        self._model = model
        self._version = version
        self._ack_wait_s = ack_wait_s
        self._aging_step_s = aging_step_s
        self._stream_replicas = stream_replicas
        self._order = list(PRIORITIES_HIGH_FIRST)
        self._order_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._inbox = nc.new_inbox()
        self._replies: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub = None
        self._doorbell_sub = None
        # Used with doorbell hints only (see the module's docstring): levels that may hold jobs, and
        # doorbells seen per level (a level found empty stays in the set when a doorbell for it came
        # while it was being asked).
        self._maybe_waiting: set[int] = set(PRIORITIES_HIGH_FIRST)
        self._rings: dict[int, int] = dict.fromkeys(PRIORITIES_HIGH_FIRST, 0)
        self._swept_at = 0.0
        # This worker's own subjects (cache-aware dispatch), with the same hints as the shared ones.
        self._instance = instance_id
        self._own_waiting: set[int] = set(PRIORITIES_HIGH_FIRST) if instance_id else set()
        self._own_rings: dict[int, int] = dict.fromkeys(PRIORITIES_HIGH_FIRST, 0)
        # Other workers' own subjects known to hold jobs, with when that was first known (monotonic);
        # and those whose consumer this worker made sure of.
        self._preferred_wait_s = preferred_wait_s
        self._foreign: dict[str, _Foreign] = {}
        self._foreign_ready: set[str] = set()

    async def start(self, on_ring: Callable[[], None] | None = None) -> None:
        """Creates the consumers; with on_ring, follows the doorbell and calls on_ring at each."""
        js = self._js
        try:
            await js.stream_info(self._stream)
        except NotFoundError:
            # The scheduler normally creates it; a worker that starts first creates it with defaults.
            await ensure_jobs_stream(self._nc, self._subjects, self._model, _DEFAULT_MAX_QUEUED, self._stream_replicas)
        for priority in PRIORITIES_HIGH_FIRST:
            await self._add_consumer_patiently(
                self._subjects.jobs_consumer(self._model, self._version, priority), self._subjects.jobs(self._model, self._version, priority)
            )
            if self._instance:
                await self._add_consumer_patiently(*self._own(priority))
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._replies.put)
        if on_ring is not None:

            async def _ring(msg: Msg) -> None:
                self.note_ring(msg.data)
                on_ring()

            self._doorbell_sub = await self._nc.subscribe(self._subjects.doorbell(self._model, self._version), cb=_ring)

    def _own(self, priority: int, instance_id: str | None = None) -> tuple[str, str]:
        """Durable consumer and subject of a worker's own queue of one level (this worker's by default)."""
        instance = instance_id or self._instance
        return (
            self._subjects.jobs_for_consumer(self._model, self._version, priority, instance),
            self._subjects.jobs_for(self._model, self._version, priority, instance),
        )

    async def _add_consumer_patiently(self, durable: str, subject: str) -> None:
        """_add_consumer, tried again while JetStream does not answer (for up to _CONSUMER_SETUP_S): on a
        cluster, the answer comes from the consumer's leader, and an election (a server died, or the
        scheduler moved its leadership: scheduler/leaders.py) may swallow it. Adding is idempotent."""
        give_up = time.monotonic() + _CONSUMER_SETUP_S
        while True:
            try:
                await self._add_consumer(durable, subject)
                return
            except (NatsTimeoutError, ServiceUnavailableError) as exc:
                if time.monotonic() >= give_up:
                    raise
                log.info("consumer_setup_retrying", consumer=durable, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)

    async def _add_consumer(self, durable: str, subject: str) -> None:
        """Creates a durable pull consumer (the same call again is a no-op: same configuration)."""
        await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait_s,
                max_waiting=512,
                # Consumers of a version (or a worker) nobody pulls any more go away by themselves.
                inactive_threshold=_CONSUMER_IDLE_S,
            ),
        )

    async def _waiting(self) -> dict[str, int]:
        """Jobs of this version waiting in the queue, by subject (one per priority)."""
        info = await self._js.stream_info(self._stream, subjects_filter=self._subjects.jobs_version(self._model, self._version))
        return info.state.subjects or {}

    async def queue_empty(self) -> bool:
        """True when no job of this version waits in the queue, at any priority, for any worker."""
        info = await self._js.stream_info(self._stream, subjects_filter=self._subjects.jobs_version_all(self._model, self._version))
        return not any((info.state.subjects or {}).values())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for sub in (self._sub, self._doorbell_sub):
            if sub is not None:
                await sub.unsubscribe()

    def note_ring(self, payload: bytes) -> None:
        """A doorbell: the level it names (every level when it names none) may hold a job, on the
        shared subject, or on the own subject of the worker it names."""
        words = payload.split()
        try:
            level = int(words[0]) if words else None
        except ValueError:
            level = None
        if len(words) > 1 and level in self._rings:
            target = words[1].decode(errors="replace")
            if target == self._instance:
                self._own_waiting.add(level)
                self._own_rings[level] += 1
            else:
                subject = self._subjects.jobs_for(self._model, self._version, level, target)
                self._foreign.setdefault(subject, _Foreign(level, target, time.monotonic()))
            return
        if level not in self._rings:
            self._maybe_waiting.update(PRIORITIES_HIGH_FIRST)
            for known in self._rings:
                self._rings[known] += 1
            return
        self._maybe_waiting.add(level)
        self._rings[level] += 1

    async def pull(self, max_jobs: int, timeout_s: float = 2.0, above: int | None = None) -> list[Msg]:
        """Up to max_jobs job messages, highest priority first; empty when every queue is empty. With
        `above`, only jobs of higher levels (a job that may preempt running work of level `above`)."""
        if self._doorbell_sub is None or time.monotonic() - self._swept_at >= _FULL_SWEEP_S:
            self._swept_at = time.monotonic()
            self._maybe_waiting.update(PRIORITIES_HIGH_FIRST)
            if self._instance:
                self._own_waiting.update(PRIORITIES_HIGH_FIRST)
            await self._sweep_foreign()
        taken: list[Msg] = []
        stale = self._stale_foreign()
        for priority in self._dispatch_order():
            if above is not None and priority <= above:
                continue
            if priority in self._own_waiting and len(taken) < max_jobs:
                taken.extend(await self._pull_hinted(self._own(priority)[0], max_jobs - len(taken), timeout_s, self._own_waiting,
                                                     self._own_rings, priority))
            for subject, known in stale.get(priority, ()):
                if len(taken) < max_jobs:
                    taken.extend(await self._pull_foreign(subject, known, max_jobs - len(taken), timeout_s))
            if priority in self._maybe_waiting and len(taken) < max_jobs:
                consumer = self._subjects.jobs_consumer(self._model, self._version, priority)
                taken.extend(await self._pull_hinted(consumer, max_jobs - len(taken), timeout_s, self._maybe_waiting, self._rings, priority))
        return taken

    async def _pull_hinted(self, consumer: str, wanted: int, timeout_s: float, waiting: set[int], rings: dict[int, int], level: int) -> list[Msg]:
        """Pulls one level's queue; a queue found empty leaves `waiting` unless a doorbell rang meanwhile."""
        before = rings[level]
        got = await self._pull_one(consumer, wanted, timeout_s)
        if len(got) < wanted and rings[level] == before:
            waiting.discard(level)
        return got

    # -- other workers' own subjects ------------------------------------------------------------
    async def _sweep_foreign(self) -> None:
        """Notes which other workers' own subjects hold jobs (one stream-info round trip)."""
        try:
            info = await self._js.stream_info(self._stream, subjects_filter=self._subjects.jobs_for_any(self._model, self._version))
        except Exception:  # reconnecting: the next sweep looks again
            return
        holding = {subject for subject, count in (info.state.subjects or {}).items() if count}
        now = time.monotonic()
        for subject in holding:
            parsed = self._subjects.parse_jobs(subject)
            if parsed is not None and parsed[2] != self._instance:
                self._foreign.setdefault(subject, _Foreign(parsed[1], parsed[2], now))
        for subject in set(self._foreign) - holding:
            del self._foreign[subject]

    def _stale_foreign(self) -> dict[int, list[tuple[str, _Foreign]]]:
        """Other workers' subjects whose jobs have waited past the bound, by level."""
        now = time.monotonic()
        stale: dict[int, list[tuple[str, _Foreign]]] = {}
        for subject, known in self._foreign.items():
            if now - known.since >= self._preferred_wait_s:
                stale.setdefault(known.level, []).append((subject, known))
        return stale

    def foreign_due_s(self) -> float | None:
        """Seconds until a job known on another worker's subject may be taken here (None: none known)."""
        if not self._foreign:
            return None
        return max(0.0, min(known.since for known in self._foreign.values()) + self._preferred_wait_s - time.monotonic())

    async def _pull_foreign(self, subject: str, known: _Foreign, wanted: int, timeout_s: float) -> list[Msg]:
        """Takes jobs another worker did not take in time, through that worker's own consumer (which
        keeps the work queue's one-delivery guarantee), creating the consumer if it is gone."""
        owner = known.owner
        consumer, _ = self._own(known.level, owner)
        try:
            if subject not in self._foreign_ready:
                await self._add_consumer(consumer, subject)
                self._foreign_ready.add(subject)
            got = await self._pull_one(consumer, wanted, timeout_s)
        except Exception as exc:  # the owner's consumer could not be made: the next sweep tries again
            log.warning("foreign_pull_failed", subject=subject, error=str(exc))
            self._foreign.pop(subject, None)
            return []
        if got:
            log.info("jobs_taken_from_other_worker", owner=owner, jobs=len(got))
        if len(got) < wanted:
            self._foreign.pop(subject, None)
            self._foreign_ready.discard(subject)
        return got

    def _dispatch_order(self) -> list[int]:
        """The current order; when it is older than the probe interval a refresh starts in the
        background, so a pull never waits on the probe's round trips (the order is at most ~1 s old)."""
        stale = time.monotonic() - self._order_at >= min(_AGING_PROBE_S, self._aging_step_s / 4)
        if self._aging_step_s > 0 and stale and (self._probe is None or self._probe.done()):
            self._order_at = time.monotonic()
            self._probe = asyncio.create_task(self.refresh_order(), name="aging-probe")
        return self._order

    async def refresh_order(self) -> None:
        """Samples the age of each waiting level's oldest job and reorders the levels (see aged_order)."""
        try:
            waiting = await self._waiting()
            levels = [p for p in PRIORITIES_HIGH_FIRST if waiting.get(self._subjects.jobs(self._model, self._version, p))]
            ages: dict[int, float] = {}
            # With one level waiting there is nothing to reorder.
            for level in levels if len(levels) > 1 else ():
                head = await self._js.get_msg(self._stream, seq=1, subject=self._subjects.jobs(self._model, self._version, level), next=True)
                ages[level] = time.time() - events_pb2.Job.FromString(head.data or b"").submitted_at
            self._order = aged_order(ages, self._aging_step_s)
        except Exception:  # a probe that fails leaves the last order in place
            pass

    async def _pull_one(self, consumer: str, batch: int, timeout_s: float) -> list[Msg]:
        # A fresh reply subject per pull, so the "no messages" status of an earlier pull cannot end this one.
        reply = f"{self._inbox}.{time.monotonic_ns()}"
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}", request, reply=reply)
        got: list[Msg] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(self._replies.get(), remaining)
            except TimeoutError:
                break
            status = (msg.headers or {}).get("Status")
            if status is None:
                # A job. It arrives under its stream subject, not the reply subject, so it cannot
                # be told apart from a late answer to an earlier pull; either way it is ours to run.
                got.append(msg)
            elif msg.subject == reply and status in _EMPTY_STATUSES:
                break
            # Other statuses (heartbeats, answers to earlier pulls) carry nothing to act on.
        return got

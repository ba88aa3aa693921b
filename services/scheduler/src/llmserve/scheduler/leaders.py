"""Keeping each job queue's consumers led by the server that leads the queue's stream.

On a NATS cluster every JetStream stream and every consumer is a Raft group of its own, and each
elects its leader by itself. A job is stored by its stream's leader and handed to a worker by its
consumer's leader; when a server dies, whatever it led stalls until the others elect a new leader
(nats-server's Raft election timeout, 4 to 9 s, is not a setting). With the consumers led elsewhere
than their stream, the death of any of those servers stalls the queue. With all of them on the
stream leader's server, the other servers (two of three) may die without any pause at all, and when
the stream leader's server dies the scheduler hands new jobs to workers directly (direct.py).

So the scheduler asks each consumer led elsewhere to step down in favour of its stream's leader (a
leader transfer, tens of milliseconds; workers confirm their acks, so none is lost across it). It acts
on JetStream's leader-elected advisories, which name the new leader (the API that lists a stream's
consumers may take seconds while leaders change): the stream's own moves every consumer known to be
led elsewhere; a consumer's asks the stream for its leader first, since the one last seen may be
the server that just died. It also sweeps the queues it knows every SWEEP_S through that API in
case an advisory was missed. Several schedulers may do the same: a stepdown toward the server that
already leads is refused ("no suitable peers"), which changes nothing. A nats-server older than
2.11 knows no preferred leader: the scheduler logs that once and leaves leaders where they are.

When the server that leads a queue dies, its stream and each consumer elect new leaders one by one.
Once the stream has one, jobs are stored again, but a consumer still without a leader would hold the
jobs queued for it until its own election. A live leader answers a stepdown in milliseconds, so a
consumer that does not answer the move after the stream's election is taken to have no leader
(`leaderless`) until its election's advisory names one, and the scheduler hands jobs for it to
workers directly instead of queueing them (queues.py, direct.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.scheduler import metrics

log = structlog.get_logger()

# Fallback sweep of every known queue, for advisories lost while reconnecting.
SWEEP_S = 10.0
# Bound on a stream's info (answered by its leader).
_API_TIMEOUT_S = 2.0
# Bound on listing a stream's consumers: the meta leader gathers them from their leaders, and waits
# up to 4 s for those whose leadership just changed (the list then lacks them).
_LIST_TIMEOUT_S = 6.0
# A consumer's own election moves it at most this often: a move does not always land on the preferred
# server (the election that follows may go to another), and a consumer must not be sent through
# election after election.
_MOVE_EVERY_S = 2.0
# Past this many tries at following its stream (which had no leader meanwhile) the sweep takes over.
_FOLLOW_TRIES = 15
# A consumer missing from the listings this long is gone (workers come and go, and their own
# consumers with them): what is known of it is dropped.
_FORGET_S = 60.0
# JetStream's advisories (subject tokens: ... LEADER_ELECTED.<stream>[.<consumer>]).
_STREAM_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*"
_CONSUMER_ELECTED = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.*.*"
_STEPDOWN = "$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"
# A consumer's leader answers a stepdown in milliseconds; no answer means it has none (or it died).
_STEPDOWN_TIMEOUT_S = 0.5
# JetStream's error codes: no server fits the placement (the preferred one already leads, or it is
# not a member); a request it cannot read (a server before 2.11 takes no body on this subject).
_PLACEMENT_REFUSED = 10005
_BAD_REQUEST = 10003
# ...and "JetStream system temporarily unavailable", a member's answer while its group has no leader.
_NO_LEADER = 10008


class ConsumerLeaderAlignment:
    """Moves the leaders of the job queues' consumers to their stream's leader (see the module)."""

    def __init__(self, nc: NATS, stream_prefix: str, known_streams: Callable[[], Iterable[str]], sweep_s: float = SWEEP_S) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=_API_TIMEOUT_S)
        self._list_js = nc.jetstream(timeout=_LIST_TIMEOUT_S)
        self._prefix = stream_prefix
        self._known_streams = known_streams
        self._sweep_s = sweep_s
        # Last leaders seen, by stream, and by stream and consumer.
        self._stream_leaders: dict[str, str] = {}
        self._consumer_leaders: dict[str, dict[str, str]] = {}
        # Elections seen per (stream, consumer): a stepdown unanswered while one came means nothing.
        self._elections: dict[tuple[str, str], int] = {}
        # When a consumer's own election last moved it (see _MOVE_EVERY_S), and the consumers being
        # moved that way (True: another election came meanwhile, look again).
        self._followed_at: dict[tuple[str, str], float] = {}
        self._following: dict[tuple[str, str], bool] = {}
        # Consumers found without a leader (a stepdown nobody answered), until an election names one.
        self._leaderless: set[tuple[str, str]] = set()
        # When each consumer was last named by an advisory or a listing.
        self._seen_at: dict[tuple[str, str], float] = {}
        self._subs: list = []
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._unsupported = False

    async def start(self) -> None:
        for subject in (_STREAM_ELECTED, _CONSUMER_ELECTED):
            self._subs.append(await self._nc.subscribe(subject, cb=self._on_elected))
        self._sweeper = asyncio.create_task(self._sweep(), name="consumer-leader-sweep")

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in [self._sweeper, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def leaderless(self, stream: str, consumer: str) -> bool:
        """Whether the consumer was last found without a leader: a job queued for it now would wait for
        its election although the stream stores it (the scheduler hands such jobs off directly)."""
        return (stream, consumer) in self._leaderless

    async def _on_elected(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        stream = tokens[5]
        if not stream.startswith(self._prefix) or self._unsupported:
            return
        try:
            leader = json.loads(msg.data)["leader"]
        except (ValueError, KeyError, TypeError):
            return
        consumers = self._consumer_leaders.setdefault(stream, {})
        if len(tokens) == 6:
            # The stream's new leader speaks for itself: every consumer led elsewhere follows it (those
            # led by a dead server answer nothing, and are known leaderless until their election).
            self._stream_leaders[stream] = leader
            misplaced = [name for name, at in consumers.items() if at != leader]
            if misplaced:
                self._spawn(self._move(stream, misplaced, leader))
            return
        consumer = tokens[6]
        consumers[consumer] = leader
        self._note_new(stream, consumer)
        self._seen_at[stream, consumer] = time.monotonic()
        self._elections[stream, consumer] = self._elections.get((stream, consumer), 0) + 1
        self._leaderless.discard((stream, consumer))
        if self._stream_leaders.get(stream) != leader:
            # The stream's leader as last seen may be gone (its server died before it was replaced):
            # ask the stream before moving anything toward it.
            self._spawn(self._follow(stream, consumer))

    def _note_new(self, stream: str, consumer: str) -> None:
        """A consumer seen for the first time is likely being created right now: its creator waits for
        its leader's answer, which a stepdown would cut off. Its first move waits _MOVE_EVERY_S."""
        self._followed_at.setdefault((stream, consumer), time.monotonic())

    def _spawn(self, work) -> None:
        task = asyncio.create_task(self._quietly(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(work) -> None:
        try:
            await work
        except Exception as exc:  # no leader yet, or reconnecting: the next advisory or sweep tries again
            log.info("consumer_leaders_not_aligned", error=f"{type(exc).__name__}: {exc}")

    async def _sweep(self) -> None:
        while not self._unsupported:
            for stream in sorted({*self._known_streams(), *self._stream_leaders}):
                await self._quietly(self.align(stream))
            await asyncio.sleep(self._sweep_s)

    async def _stream_leader(self, stream: str) -> str | None:
        """The stream's leader as the stream answers now; None for a stream of one replica."""
        info = await self._js.stream_info(stream)
        leader = info.cluster.leader if info.cluster else None
        if not leader or info.config.num_replicas is None or info.config.num_replicas < 2:
            return None
        self._stream_leaders[stream] = leader
        return leader

    async def _follow(self, stream: str, consumer: str) -> None:
        """After the consumer's own election: toward the stream's leader, at most every _MOVE_EVERY_S.
        Elections while this runs make it look again once it is done (one such task per consumer)."""
        key = (stream, consumer)
        if key in self._following:
            self._following[key] = True
            return
        self._following[key] = False
        try:
            for _ in range(_FOLLOW_TRIES):
                wait = self._followed_at.get(key, -_MOVE_EVERY_S) + _MOVE_EVERY_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._followed_at[key] = time.monotonic()
                try:
                    leader = await self._stream_leader(stream)
                except Exception:  # the stream has no leader yet either: ask again in a moment
                    continue
                if leader is not None and self._consumer_leaders[stream].get(consumer) != leader:
                    await self._transfer(stream, [consumer], leader)
                if not self._following[key]:
                    return
                self._following[key] = False
        finally:
            self._following.pop(key, None)

    async def align(self, stream: str) -> int:
        """Looks the leaders of `stream` and its consumers up and moves every consumer led elsewhere;
        returns how many moved."""
        leader = await self._stream_leader(stream)
        if leader is None:
            return 0
        found = {c.name: c.cluster.leader for c in await self._list_js.consumers_info(stream) if c.cluster and c.cluster.leader}
        known = self._consumer_leaders.setdefault(stream, {})
        for name in found.keys() - known.keys():
            self._note_new(stream, name)
        now = time.monotonic()
        for name in found:
            self._seen_at[stream, name] = now
        for name in known.keys() - found.keys():
            if now - self._seen_at.get((stream, name), now) > _FORGET_S:
                self._forget(stream, name)
        # The list may lack consumers whose leadership just changed: what it lacks is kept as last seen
        # (for _FORGET_S).
        known.update(found)
        self._leaderless -= {(stream, name) for name in found}
        return await self._move(stream, [name for name, at in found.items() if at != leader], leader)

    def _forget(self, stream: str, consumer: str) -> None:
        key = (stream, consumer)
        self._consumer_leaders[stream].pop(consumer, None)
        for table in (self._elections, self._followed_at, self._seen_at):
            table.pop(key, None)
        self._leaderless.discard(key)

    async def _move(self, stream: str, consumers: list[str], leader: str) -> int:
        now = time.monotonic()
        settled = []
        for name in consumers:
            if now - self._followed_at.get((stream, name), -_MOVE_EVERY_S) < _MOVE_EVERY_S:
                self._spawn(self._follow(stream, name))  # just made, or just moved: in a moment
            else:
                settled.append(name)
        return await self._transfer(stream, settled, leader)

    async def _transfer(self, stream: str, consumers: list[str], leader: str) -> int:
        moved = sum(await asyncio.gather(*(self._step_down(stream, name, leader) for name in consumers)))
        if moved:
            metrics.CONSUMER_LEADER_MOVES.labels(stream=stream).inc(moved)
        return moved

    async def _step_down(self, stream: str, consumer: str, preferred: str) -> bool:
        key = (stream, consumer)
        elections = self._elections.get(key, 0)
        request = json.dumps({"placement": {"preferred": preferred}}).encode()
        try:
            reply = await self._nc.request(_STEPDOWN.format(stream=stream, consumer=consumer), request, timeout=_STEPDOWN_TIMEOUT_S)
            answer = json.loads(reply.data or b"{}")
            error = answer.get("error")
            no_leader = bool(error) and error.get("err_code") == _NO_LEADER
        except Exception as exc:
            error, no_leader = {"description": f"{type(exc).__name__}: {exc}"}, True
        if no_leader:
            # Its election's advisory brings it here again; one that came meanwhile makes this moot.
            if self._elections.get(key, 0) == elections:
                self._leaderless.add(key)
                log.info("consumer_without_leader", stream=stream, consumer=consumer, error=error.get("description"))
            return False
        self._leaderless.discard(key)
        if not error:
            log.info("consumer_leader_moved", stream=stream, consumer=consumer, to=preferred)
            return bool(answer.get("success"))
        if error.get("err_code") == _PLACEMENT_REFUSED:
            return False
        if error.get("err_code") == _BAD_REQUEST:
            # Leaders stay where they were elected.
            self._unsupported = True
            log.warning("consumer_leader_placement_unsupported", stream=stream, error=error.get("description"))
            return False
        log.info("consumer_leader_not_moved", stream=stream, consumer=consumer, error=error.get("description"))
        return False

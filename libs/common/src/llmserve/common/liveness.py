"""A view of which instances are alive, built from the heartbeats on NATS.

An instance is live while its last beat is younger than `dead_after_s`. The router, the scheduler
and the monitor each keep one; they agree because they read the same beats.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2


@dataclass
class InstanceState:
    beat: events_pb2.Heartbeat
    # Local monotonic time the last beat arrived; clocks of other hosts are never compared.
    seen_at: float = field(default_factory=time.monotonic)


# Missed beats after which an instance is dead. 2.5 beats at the default 1 s interval, checked every
# 0.25 s, declares a crashed instance dead within 3 s of its last beat.
DEAD_AFTER_BEATS = 2.5


class LivenessTable:
    def __init__(self, dead_after_s: float = DEAD_AFTER_BEATS) -> None:
        self.dead_after_s = dead_after_s
        self.instances: dict[str, InstanceState] = {}
        # When the table started hearing beats (None: not yet); see `settled`.
        self.listening_since: float | None = None

    def observe(self, beat: events_pb2.Heartbeat) -> bool:
        """Records a beat; returns True when the instance was not known as live before."""
        previous = self.instances.get(beat.instance_id)
        was_live = previous is not None and self._is_live(previous, time.monotonic())
        self.instances[beat.instance_id] = InstanceState(beat)
        return not was_live

    def _is_live(self, state: InstanceState, now: float) -> bool:
        return now - state.seen_at < self.dead_after_s

    def forgive(self) -> None:
        """Restarts every instance's clock: beats missed while this process was cut off from NATS say
        nothing about the instances (called after a reconnect)."""
        now = time.monotonic()
        for state in self.instances.values():
            state.seen_at = now

    def expire(self) -> list[InstanceState]:
        """Removes and returns the instances whose beats stopped."""
        now = time.monotonic()
        dead = [s for s in self.instances.values() if not self._is_live(s, now)]
        for state in dead:
            del self.instances[state.beat.instance_id]
        return dead

    def live(self, kind: int | None = None) -> list[events_pb2.Heartbeat]:
        now = time.monotonic()
        return [
            s.beat
            for s in self.instances.values()
            if self._is_live(s, now) and (kind is None or s.beat.kind == kind)
        ]

    def live_workers(self, model: str | None = None, version: int | None = None) -> list[events_pb2.Heartbeat]:
        return [
            b
            for b in self.live(events_pb2.INSTANCE_KIND_WORKER)
            if b.ready and (model is None or b.model == model) and (version is None or b.model_version == version)
        ]

    def live_versions(self, model: str) -> set[int]:
        """Versions of `model` that at least one ready worker takes new jobs for."""
        return {b.model_version for b in self.live_workers(model)}

    def settled(self) -> bool:
        """Whether the table has listened long enough to have heard every live instance: a process that
        has just started knows no instance yet, and "no live worker" from it would be wrong."""
        return self.listening_since is not None and time.monotonic() - self.listening_since >= self.dead_after_s

    async def wait_settled(self) -> None:
        """Until `settled` (at most dead_after_s after the subscription; at once when not subscribed)."""
        if self.listening_since is not None:
            remaining = self.listening_since + self.dead_after_s - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)

    async def subscribe(self, nc: NATS, subjects: Subjects) -> None:
        async def _on_beat(msg: Msg) -> None:
            try:
                self.observe(events_pb2.Heartbeat.FromString(msg.data))
            except Exception:  # a malformed beat must not stop the subscription
                pass

        await nc.subscribe(subjects.heartbeat_all, cb=_on_beat)
        self.listening_since = time.monotonic()

"""Turning heartbeats into up/dead events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.heartbeat import KIND_NAMES
from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2

log = structlog.get_logger()

_STATES = {"up": events_pb2.INSTANCE_STATE_UP, "dead": events_pb2.INSTANCE_STATE_DEAD}


class HeartbeatTracker:
    """Declares an instance dead once its beats stop for dead_after_s, checking every check_s."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        dead_after_s: float,
        check_s: float = 0.25,
        on_dead: Callable[[events_pb2.Heartbeat], None] | None = None,
        on_beat: Callable[[events_pb2.Heartbeat], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self.table = LivenessTable(dead_after_s)
        self._check_s = check_s
        self._on_dead = on_dead
        self._beat_hook = on_beat
        self._sub = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subjects.heartbeat_all, cb=self._on_beat)

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = events_pb2.Heartbeat.FromString(msg.data)
        except Exception:
            return
        if self.table.observe(beat):
            await self._announce(beat, "up")
        if self._beat_hook is not None:
            self._beat_hook(beat)

    async def _announce(self, beat: events_pb2.Heartbeat, state: str) -> None:
        kind = KIND_NAMES.get(beat.kind, "unknown")
        log.info(f"instance_{state}", instance_id=beat.instance_id, kind=kind, model=beat.model or None)
        event = events_pb2.InstanceEvent(
            instance_id=beat.instance_id,
            kind=beat.kind,
            instance_state=_STATES[state],
            state=state,
            at=time.time(),
            model=beat.model,
            model_version=beat.model_version,
        )
        await self._nc.publish(self._subjects.event(f"instance.{state}"), event.SerializeToString())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for state in self.table.expire():
                await self._announce(state.beat, "dead")
                if self._on_dead is not None:
                    self._on_dead(state.beat)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._check_s)

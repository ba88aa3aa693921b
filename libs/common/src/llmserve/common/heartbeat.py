"""Heartbeats: every instance publishes its liveness and load at a fixed interval."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import psutil
import structlog
from nats.aio.client import Client as NATS

from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2

log = structlog.get_logger()

KIND_NAMES = {
    events_pb2.INSTANCE_KIND_ROUTER: "router",
    events_pb2.INSTANCE_KIND_SCHEDULER: "scheduler",
    events_pb2.INSTANCE_KIND_WORKER: "worker",
    events_pb2.INSTANCE_KIND_REGISTRY: "registry",
    events_pb2.INSTANCE_KIND_MONITOR: "monitor",
}


class HeartbeatPublisher:
    """Publishes a Heartbeat every interval until stopped. `fill` adds the service's own load fields
    and says whether it is ready (a beat is ready unless `fill` says otherwise)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        instance_id: str,
        kind: int,
        interval_s: float,
        fill: Callable[[events_pb2.Heartbeat], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subject = subjects.heartbeat(KIND_NAMES[kind], instance_id)
        self._instance_id = instance_id
        self._kind = kind
        self._interval_s = interval_s
        self._fill = fill
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only sets the baseline
        self._task: asyncio.Task[None] | None = None

    def build(self) -> events_pb2.Heartbeat:
        beat = events_pb2.Heartbeat(
            instance_id=self._instance_id,
            kind=self._kind,
            sent_at=time.time(),
            interval_s=self._interval_s,
            ready=True,
            rss_bytes=self._process.memory_info().rss,
            cpu_percent=self._process.cpu_percent(None),
            host=socket.gethostname(),
        )
        if self._fill is not None:
            self._fill(beat)
        return beat

    async def beat_once(self) -> None:
        await self._nc.publish(self._subject, self.build().SerializeToString())

    async def _run(self) -> None:
        while True:
            try:
                await self.beat_once()
            except Exception as exc:  # a beat lost during a reconnect is replaced by the next one
                log.warning("heartbeat_failed", error=str(exc))
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

"""What every service process sets up the same way: identity, shutdown signal, readiness, NATS, Redis, heartbeats.

    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_ROUTER) as rt:
        ...                             # listeners first: health answers "not ready" while waiting
        redis = await rt.connect_redis()  # wait visibly (see startup.py)
        nc = await rt.connect_nats()
        ...
        rt.started()
        await rt.stop.wait()

Everything opened through the runtime is closed in reverse order when the block ends. A signal
during any wait of the runtime ends the block with ShutdownRequested, which run_main turns into a
clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
import structlog
from nats.aio.client import Client as NATS

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import CommonSettings, redacted_url
from llmserve.common.heartbeat import KIND_NAMES, HeartbeatPublisher
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.liveness import DEAD_AFTER_BEATS, LivenessTable
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import NatsEvents, connect_once, usable
from llmserve.common.redisio import redis_client
from llmserve.common.startup import Readiness, ShutdownRequested, StartupGate, StartupTimeout
from llmserve.common.subjects import Subjects
from llmserve.common.tracing import configure as configure_tracing
from llmserve.v1 import events_pb2

T = TypeVar("T")


@dataclass
class ServiceRuntime:
    common: CommonSettings
    kind: int
    instance_id: str
    # Set by the first SIGTERM or SIGINT.
    stop: asyncio.Event
    subjects: Subjects
    keys: RedisKeys
    stack: contextlib.AsyncExitStack
    readiness: Readiness
    gate: StartupGate
    # The process's one NATS client and Redis client; objects may hold them before connect_nats()
    # and connect_redis() have connected them.
    nats: NATS
    redis: aioredis.Redis
    # Run after every NATS reconnect.
    reconnect_hooks: list[Callable[[], None]] = field(default_factory=list)

    async def connect_nats(self) -> NATS:
        """Connects `self.nats`, waiting as long as it takes (see startup.py); reconnects forever after."""
        nc = self.nats

        def _state(up: bool) -> None:
            if up:
                self.readiness.clear("nats")
            else:
                self.readiness.block("nats", "connection lost, reconnecting")

        events = NatsEvents(self.reconnect_hooks, _state)
        await self.gate.until_reachable("nats", self.common.nats_url, lambda: connect_once(nc, self.common.nats_url, self.instance_id, events))
        self.stack.push_async_callback(_close_nats, nc, events)
        return nc

    async def connect_redis(self) -> aioredis.Redis:
        """A Redis client once the server answered a PING (waiting as long as it takes); redis-py
        reconnects by itself afterwards."""
        await self.gate.until_reachable("redis", redacted_url(self.common.redis_url), self.redis.ping)
        return self.redis

    async def unless_stopped(self, work: Awaitable[T]) -> T:
        """`work`'s result, or ShutdownRequested when the first signal comes first (loading a model, say)."""
        return await self.gate.unless_stopped(work)

    def started(self) -> None:
        """The service's own start-up is done; it is ready once its dependencies are."""
        self.readiness.clear("starting")

    def catalog(self, client: aioredis.Redis) -> ModelCatalog:
        return ModelCatalog(client, self.keys)

    def liveness_table(self) -> LivenessTable:
        """An empty table; it hears beats once listen_liveness() subscribed it."""
        return LivenessTable(dead_after_s=DEAD_AFTER_BEATS * self.common.heartbeat_interval_s)

    async def listen_liveness(self, table: LivenessTable) -> None:
        await table.subscribe(self.nats, self.subjects)
        self.reconnect_hooks.append(table.forgive)

    async def liveness(self) -> LivenessTable:
        """A table that hears beats from now on (NATS connected)."""
        table = self.liveness_table()
        await self.listen_liveness(table)
        return table

    def start_heartbeat(
        self, nc: NATS, fill: Callable[[events_pb2.Heartbeat], None] | None = None
    ) -> HeartbeatPublisher:
        """Beats carry the process's readiness (a `fill` may narrow it further)."""

        def fill_beat(beat: events_pb2.Heartbeat) -> None:
            beat.ready = self.readiness.ready
            if fill is not None:
                fill(beat)

        heartbeat = HeartbeatPublisher(nc, self.subjects, self.instance_id, self.kind, self.common.heartbeat_interval_s, fill_beat)
        heartbeat.start()
        self.stack.push_async_callback(heartbeat.stop)
        return heartbeat


@contextlib.asynccontextmanager
async def service_runtime(common: CommonSettings, kind: int) -> AsyncIterator[ServiceRuntime]:
    stop = shutdown_event()
    instance_id = new_instance_id(KIND_NAMES[kind])
    structlog.contextvars.bind_contextvars(instance=instance_id)
    readiness = Readiness()
    async with contextlib.AsyncExitStack() as stack:
        # First in, last out: spans ended by anything closed below are still exported at exit.
        stack.callback(configure_tracing(KIND_NAMES[kind], instance_id))
        # from_url connects on first use only.
        redis = redis_client(common)
        stack.push_async_callback(redis.aclose)
        yield ServiceRuntime(
            common=common,
            kind=kind,
            instance_id=instance_id,
            stop=stop,
            subjects=Subjects(common.subject_prefix),
            keys=RedisKeys(common.key_prefix),
            stack=stack,
            readiness=readiness,
            nats=NATS(),
            redis=redis,
            gate=StartupGate(stop, readiness, common.startup_timeout_s),
        )


async def _close_nats(nc: NATS, events: NatsEvents) -> None:
    events.closing = True
    if usable(nc):
        # drain() delivers what is in flight before closing: nothing accepted is dropped on shutdown.
        await nc.drain()
    else:
        await nc.close()


def run_main(service: str, common: CommonSettings, entry: Callable[[], Coroutine[None, None, None]]) -> int:
    """Logging first, then the service's coroutine. Exit 0 on a signal at any stage; 1 when a
    dependency stayed away past LLMSERVE_STARTUP_TIMEOUT_S."""
    configure_logging(service, common.log_format, common.log_level)
    log = structlog.get_logger()
    try:
        asyncio.run(entry())
    except ShutdownRequested:
        log.info("stopped_during_startup")
    except StartupTimeout as exc:
        log.error("startup_timeout", reason=str(exc))
        return 1
    except KeyboardInterrupt:
        pass
    return 0

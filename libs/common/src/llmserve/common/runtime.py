"""What every service process sets up the same way: identity, shutdown signal, NATS, Redis, heartbeats.

    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_ROUTER) as rt:
        nc = await rt.connect_nats()
        ...
        await rt.stop.wait()

Everything opened through the runtime is closed in reverse order when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from nats.aio.client import Client as NATS

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import CommonSettings
from llmserve.common.heartbeat import KIND_NAMES, HeartbeatPublisher
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.liveness import DEAD_AFTER_BEATS, LivenessTable
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import connect_nats
from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2


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
    # Run after every NATS reconnect.
    reconnect_hooks: list[Callable[[], None]] = field(default_factory=list)

    async def connect_nats(self) -> NATS:
        nc = await connect_nats(self.common.nats_url, name=self.instance_id, on_reconnect=self.reconnect_hooks)
        # drain() delivers what is in flight before closing: nothing accepted is dropped on shutdown.
        self.stack.push_async_callback(nc.drain)
        return nc

    def connect_redis(self) -> aioredis.Redis:
        client = aioredis.from_url(self.common.redis_url)
        self.stack.push_async_callback(client.aclose)
        return client

    def catalog(self, client: aioredis.Redis) -> ModelCatalog:
        return ModelCatalog(client, self.keys)

    async def liveness(self, nc: NATS) -> LivenessTable:
        table = LivenessTable(dead_after_s=DEAD_AFTER_BEATS * self.common.heartbeat_interval_s)
        await table.subscribe(nc, self.subjects)
        self.reconnect_hooks.append(table.forgive)
        return table

    def start_heartbeat(
        self, nc: NATS, fill: Callable[[events_pb2.Heartbeat], None] | None = None
    ) -> HeartbeatPublisher:
        heartbeat = HeartbeatPublisher(nc, self.subjects, self.instance_id, self.kind, self.common.heartbeat_interval_s, fill)
        heartbeat.start()
        self.stack.push_async_callback(heartbeat.stop)
        return heartbeat


@contextlib.asynccontextmanager
async def service_runtime(common: CommonSettings, kind: int) -> AsyncIterator[ServiceRuntime]:
    stop = shutdown_event()
    instance_id = new_instance_id(KIND_NAMES[kind])
    structlog.contextvars.bind_contextvars(instance=instance_id)
    async with contextlib.AsyncExitStack() as stack:
        yield ServiceRuntime(
            common=common,
            kind=kind,
            instance_id=instance_id,
            stop=stop,
            subjects=Subjects(common.subject_prefix),
            keys=RedisKeys(common.key_prefix),
            stack=stack,
        )


def run_main(service: str, common: CommonSettings, entry: Callable[[], Coroutine[None, None, None]]) -> int:
    """Logging first, then the service's coroutine; Ctrl-C ends quietly."""
    configure_logging(service, common.log_format, common.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(entry())
    return 0

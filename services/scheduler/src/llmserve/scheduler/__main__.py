"""python -m llmserve.scheduler — admits submissions and queues jobs on JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import redis.asyncio as aioredis
import structlog

from llmserve.common.catalog import ModelCatalog
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.liveness import DEAD_AFTER_BEATS, LivenessTable
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import connect_nats, ensure_jobs_stream
from llmserve.common.subjects import Subjects
from llmserve.scheduler.service import Scheduler
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(settings: SchedulerSettings) -> None:
    stop = shutdown_event()
    common = settings.common
    instance_id = new_instance_id("scheduler")
    structlog.contextvars.bind_contextvars(instance=instance_id)
    subjects = Subjects(common.subject_prefix)
    async with contextlib.AsyncExitStack() as stack:
        redis = aioredis.from_url(common.redis_url)
        stack.push_async_callback(redis.aclose)
        nc = await connect_nats(common.nats_url, name=instance_id)
        stack.push_async_callback(nc.drain)
        await ensure_jobs_stream(nc, subjects, settings.max_queued)
        liveness = LivenessTable(dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s)
        await liveness.subscribe(nc, subjects)
        scheduler = Scheduler(nc, subjects, ModelCatalog(redis, RedisKeys(common.key_prefix)), liveness)
        await scheduler.start()
        heartbeat = HeartbeatPublisher(nc, subjects, instance_id, events_pb2.INSTANCE_KIND_SCHEDULER, common.heartbeat_interval_s)
        heartbeat.start()
        stack.push_async_callback(heartbeat.stop)
        log.info("scheduler_ready", stream=subjects.jobs_stream)
        await stop.wait()
        log.info("scheduler_stopping")
        await scheduler.stop()


def main() -> int:
    settings = SchedulerSettings.from_env()
    configure_logging("scheduler", settings.common.log_format, settings.common.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

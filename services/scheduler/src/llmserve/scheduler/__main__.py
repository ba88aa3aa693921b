"""python -m llmserve.scheduler — admits submissions and queues jobs on JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import structlog

from llmserve.common.metrics_server import serve_metrics
from llmserve.common.natsio import ensure_jobs_stream
from llmserve.common.runtime import run_main, service_runtime
from llmserve.scheduler.service import Scheduler
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(settings: SchedulerSettings) -> None:
    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_SCHEDULER) as rt:
        redis = rt.connect_redis()
        nc = await rt.connect_nats()
        await ensure_jobs_stream(nc, rt.subjects, settings.max_queued)
        scheduler = Scheduler(nc, rt.subjects, rt.catalog(redis), await rt.liveness(nc))
        await scheduler.start()
        rt.start_heartbeat(nc, scheduler.fill_beat)
        serve_metrics(settings.metrics_addr)
        log.info("scheduler_ready", stream=rt.subjects.jobs_stream)
        while not rt.stop.is_set():
            await scheduler.refresh_queue_depth()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), settings.common.heartbeat_interval_s)
        log.info("scheduler_stopping")
        await scheduler.stop()


def main() -> int:
    settings = SchedulerSettings.from_env()
    return run_main("scheduler", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

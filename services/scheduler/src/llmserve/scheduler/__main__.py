"""python -m llmserve.scheduler — admits submissions and queues jobs on JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import structlog

from llmserve.common.metrics_server import serve_metrics
from llmserve.common.runtime import run_main, service_runtime
from llmserve.scheduler.direct import DirectHandoff
from llmserve.scheduler.leaders import ConsumerLeaderAlignment
from llmserve.scheduler.queues import JobQueues
from llmserve.scheduler.service import Scheduler
from llmserve.scheduler.settings import SchedulerSettings
from llmserve.scheduler.tenants import TenantLimits, TenantPolicy
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(settings: SchedulerSettings) -> None:
    async with service_runtime(settings.common, events_pb2.INSTANCE_KIND_SCHEDULER) as rt:
        serve_metrics(settings.metrics_addr, rt.readiness)
        redis = await rt.connect_redis()
        nc = await rt.connect_nats()
        queues = JobQueues(nc, rt.subjects, settings.max_queued, settings.common.nats_js_replicas)
        rt.reconnect_hooks.append(queues.forget_streams)
        tenants = TenantPolicy(
            redis, rt.keys, TenantLimits(settings.tenant_max_active, settings.tenant_max_priority), settings.lease_s
        )
        liveness = await rt.liveness()
        direct = DirectHandoff(nc, rt.subjects, liveness, redis, rt.keys)
        scheduler = Scheduler(nc, rt.subjects, rt.catalog(redis), liveness, queues, tenants, settings.cache_aware, direct)
        await scheduler.start()
        alignment = None
        if settings.common.nats_js_replicas > 1:
            alignment = ConsumerLeaderAlignment(nc, rt.subjects.jobs_stream_prefix, lambda: map(rt.subjects.jobs_stream, queues.states))
            await alignment.start()
            queues.consumer_leaderless = alignment.leaderless
        rt.start_heartbeat(nc, scheduler.fill_beat)
        rt.started()
        log.info("scheduler_ready", max_queued_per_model=settings.max_queued, tenant_max_active=settings.tenant_max_active,
                 cache_aware=settings.cache_aware)
        while not rt.stop.is_set():
            await scheduler.refresh_queue_depth()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), settings.common.heartbeat_interval_s)
        log.info("scheduler_stopping")
        if alignment is not None:
            await alignment.stop()
        await scheduler.stop()


def main() -> int:
    settings = SchedulerSettings.from_env()
    return run_main("scheduler", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

"""python -m llmserve.monitor — tracks heartbeats and announces instances that die."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import structlog

from llmserve.common.config import CommonSettings
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.liveness import DEAD_AFTER_BEATS
from llmserve.common.logging import configure_logging
from llmserve.common.natsio import connect_nats
from llmserve.common.subjects import Subjects
from llmserve.monitor.tracker import HeartbeatTracker
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(common: CommonSettings) -> None:
    stop = shutdown_event()
    instance_id = new_instance_id("monitor")
    structlog.contextvars.bind_contextvars(instance=instance_id)
    subjects = Subjects(common.subject_prefix)
    nc = await connect_nats(common.nats_url, name=instance_id)
    try:
        # Dead after 2.5 missed beats: within 3 s at the default 1 s interval.
        tracker = HeartbeatTracker(nc, subjects, dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s)
        await tracker.start()
        heartbeat = HeartbeatPublisher(nc, subjects, instance_id, events_pb2.INSTANCE_KIND_MONITOR, common.heartbeat_interval_s)
        heartbeat.start()
        log.info("monitor_ready")
        await tracker.run(stop)
        await heartbeat.stop()
    finally:
        await nc.drain()


def main() -> int:
    common = CommonSettings.from_env()
    configure_logging("monitor", common.log_format, common.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(common))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m llmserve.monitor — tracks heartbeats and announces instances that die."""

from __future__ import annotations

import sys

import structlog

from llmserve.common.config import CommonSettings
from llmserve.common.liveness import DEAD_AFTER_BEATS
from llmserve.common.runtime import run_main, service_runtime
from llmserve.monitor.tracker import HeartbeatTracker
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(common: CommonSettings) -> None:
    async with service_runtime(common, events_pb2.INSTANCE_KIND_MONITOR) as rt:
        nc = await rt.connect_nats()
        # Dead after 2.5 missed beats: within 3 s at the default 1 s interval.
        tracker = HeartbeatTracker(nc, rt.subjects, dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s)
        await tracker.start()
        rt.reconnect_hooks.append(tracker.table.forgive)
        rt.start_heartbeat(nc)
        log.info("monitor_ready")
        await tracker.run(rt.stop)


def main() -> int:
    common = CommonSettings.from_env()
    return run_main("monitor", common, lambda: run(common))


if __name__ == "__main__":
    sys.exit(main())

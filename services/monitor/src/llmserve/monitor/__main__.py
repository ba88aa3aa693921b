"""python -m llmserve.monitor — tracks heartbeats and announces instances that die."""

from __future__ import annotations

import os
import sys

import structlog

from llmserve.common.config import CommonSettings, env_str
from llmserve.common.http_server import HttpServer
from llmserve.common.liveness import DEAD_AFTER_BEATS
from llmserve.common.runtime import run_main, service_runtime
from llmserve.monitor.status import ClusterMetrics, create_app
from llmserve.monitor.tracker import HeartbeatTracker
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(common: CommonSettings, http_addr: str) -> None:
    async with service_runtime(common, events_pb2.INSTANCE_KIND_MONITOR) as rt:
        nc = await rt.connect_nats()
        # Dead after 2.5 missed beats: within 3 s at the default 1 s interval.
        metrics = ClusterMetrics()
        tracker = HeartbeatTracker(
            nc, rt.subjects, dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s, on_dead=metrics.count_death
        )
        await tracker.start()
        http = HttpServer(create_app(tracker.table, metrics), http_addr, graceful_s=2)
        await http.start()
        rt.stack.push_async_callback(http.stop)
        log.info("monitor_listening", http=http_addr)
        rt.reconnect_hooks.append(tracker.table.forgive)
        rt.start_heartbeat(nc)
        log.info("monitor_ready")
        await tracker.run(rt.stop)


def main() -> int:
    common = CommonSettings.from_env()
    # LLMSERVE_MONITOR_HTTP_ADDR: where the status page, /status (JSON) and /metrics are served.
    http_addr = env_str(os.environ, "LLMSERVE_MONITOR_HTTP_ADDR", "127.0.0.1:8001")
    return run_main("monitor", common, lambda: run(common, http_addr))


if __name__ == "__main__":
    sys.exit(main())

"""python -m llmserve.monitor — tracks heartbeats and announces instances that die."""

from __future__ import annotations

import asyncio
import sys
import time

import structlog

from llmserve.common.http_server import HttpServer
from llmserve.common.liveness import DEAD_AFTER_BEATS
from llmserve.common.runtime import run_main, service_runtime
from llmserve.monitor.alerts import Alerter
from llmserve.monitor.history import LoadHistory
from llmserve.monitor.probes import Prober
from llmserve.monitor.settings import MonitorSettings
from llmserve.monitor.slo_rules import SloRules
from llmserve.monitor.status import ClusterMetrics, create_app
from llmserve.monitor.tracker import HeartbeatTracker
from llmserve.v1 import events_pb2

log = structlog.get_logger()


async def run(settings: MonitorSettings) -> None:
    common = settings.common
    async with service_runtime(common, events_pb2.INSTANCE_KIND_MONITOR) as rt:
        nc = rt.nats  # connected below, once the status page (and /readyz) answers
        metrics = ClusterMetrics()
        alerter = Alerter(settings.alert_webhook)
        background: set[asyncio.Task] = set()

        rules = SloRules(settings.thresholds)

        def alert(kind: str, summary: str, **details: object) -> None:
            task = asyncio.create_task(alerter.raise_alert(kind, summary, **details))
            background.add(task)
            task.add_done_callback(background.discard)

        def on_dead(beat: events_pb2.Heartbeat) -> None:
            metrics.count_death(beat.kind)
            alert("instance_down", f"{beat.instance_id} stopped sending heartbeats", instance=beat.instance_id)

        def on_beat(beat: events_pb2.Heartbeat) -> None:
            for kind, summary, details in rules.check(beat, time.monotonic()):
                alert(kind, summary, **details)

        # Dead after 2.5 missed beats: within 3 s at the default 1 s interval.
        tracker = HeartbeatTracker(
            nc, rt.subjects, dead_after_s=DEAD_AFTER_BEATS * common.heartbeat_interval_s, on_dead=on_dead, on_beat=on_beat
        )
        prober = Prober(nc, rt.subjects, tracker.table, alerter, settings.probes)
        history = LoadHistory(settings.history_step_s)
        http = HttpServer(create_app(tracker.table, metrics, prober, alerter, rt.readiness, history), settings.http_addr, graceful_s=2)
        await http.start()
        rt.stack.push_async_callback(http.stop)
        await rt.connect_nats()
        await tracker.start()
        rt.reconnect_hooks.append(tracker.table.forgive)
        rt.start_heartbeat(nc)
        rt.started()
        log.info("monitor_ready", http=settings.http_addr, probe_interval_s=settings.probes.interval_s)
        probing = asyncio.create_task(prober.run(rt.stop))
        sampling = asyncio.create_task(_sample_history(history, tracker, prober, rt.stop))
        await tracker.run(rt.stop)
        await asyncio.gather(probing, sampling)


async def _sample_history(history: LoadHistory, tracker: HeartbeatTracker, prober: Prober, stop: asyncio.Event) -> None:
    while not stop.is_set():
        history.sample(tracker.table, prober.results, time.time())
        try:
            await asyncio.wait_for(stop.wait(), history.step_s)
        except TimeoutError:
            pass


def main() -> int:
    settings = MonitorSettings.from_env()
    return run_main("monitor", settings.common, lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())

"""The monitor's desired worker count per model, from heartbeats: busy slots, the queue and its drain."""

import pytest

from llmserve.common.liveness import LivenessTable
from llmserve.monitor.scaling import demand, scaling_view
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit


def worker(instance: str, busy: int, total: int = 8, model: str = "m") -> events_pb2.Heartbeat:
    return events_pb2.Heartbeat(instance_id=instance, kind=events_pb2.INSTANCE_KIND_WORKER, ready=True, model=model, model_version=1,
                                slots_total=total, slots_busy=busy)


def scheduler(instance: str, queued: int, drain: float, model: str = "m") -> events_pb2.Heartbeat:
    beat = events_pb2.Heartbeat(instance_id=instance, kind=events_pb2.INSTANCE_KIND_SCHEDULER)
    beat.model_loads.add(model=model, queued_jobs=queued, queue_drain_per_s=drain)
    return beat


def test_busy_slots_and_the_queue_beyond_what_drains_ask_for_workers():
    table = LivenessTable()
    table.observe(worker("w1", busy=8))
    table.observe(worker("w2", busy=8))
    # 40 queued, 1 job/s drains: 10 clear within the target wait, 30 need slots: (16 + 30) / 8 -> 6.
    table.observe(scheduler("s1", queued=40, drain=1.0))
    table.observe(scheduler("s2", queued=38, drain=0.5))
    assert demand(table)["m"].desired_workers == 6
    # A queue that drains fast enough needs no more workers than the busy slots do.
    table.observe(scheduler("s1", queued=40, drain=10.0))
    assert demand(table)["m"].desired_workers == 2


def test_an_idle_model_wants_none_and_a_queue_without_workers_wants_one():
    table = LivenessTable()
    table.observe(worker("w1", busy=0))
    table.observe(scheduler("s1", queued=3, drain=0.0, model="other"))
    view = scaling_view(table)["models"]
    assert view["m"]["desired_workers"] == 0
    assert view["other"]["desired_workers"] == 1 and view["other"]["workers"] == 0

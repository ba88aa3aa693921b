"""How many workers each model needs now, for autoscalers (KEDA's metrics-api trigger, an HPA on the
Prometheus metric, or a person).

From the heartbeats: each model's live workers with their slots and busy slots (all versions), and its
queue as the schedulers see it (depth and how fast it drains). The jobs the queue's current drain rate
clears within `target_wait_s` need no new worker; the rest, with the busy slots, need slots:

    desired = ceil((busy slots + max(0, queued - drain rate x target_wait_s)) / slots per worker)

at least 1 while anything runs or waits, 0 when the model is idle (an autoscaler's minimum decides
whether it keeps one). A model with queued jobs and no live worker needs one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from llmserve.common.liveness import LivenessTable
from llmserve.v1 import events_pb2

# Queued jobs the current workers clear within this many seconds do not ask for another worker.
TARGET_WAIT_S = 10.0


@dataclass
class ModelDemand:
    workers: int = 0
    slots: int = 0
    busy_slots: int = 0
    queued_jobs: int = 0
    drain_per_s: float = 0.0
    desired_workers: int = 0


def demand(table: LivenessTable, target_wait_s: float = TARGET_WAIT_S) -> dict[str, ModelDemand]:
    models: dict[str, ModelDemand] = {}
    for beat in table.live_workers():
        entry = models.setdefault(beat.model, ModelDemand())
        entry.workers += 1
        entry.slots += beat.slots_total
        entry.busy_slots += min(beat.slots_busy, beat.slots_total)
    # Schedulers share one queue per model: the largest figure any of them saw.
    for beat in table.live(events_pb2.INSTANCE_KIND_SCHEDULER):
        for load in beat.model_loads:
            entry = models.setdefault(load.model, ModelDemand())
            entry.queued_jobs = max(entry.queued_jobs, load.queued_jobs)
            entry.drain_per_s = max(entry.drain_per_s, load.queue_drain_per_s)
    for entry in models.values():
        per_worker = entry.slots / entry.workers if entry.workers else 0
        excess = max(0.0, entry.queued_jobs - entry.drain_per_s * target_wait_s)
        if not per_worker:
            entry.desired_workers = 1 if entry.queued_jobs else 0
        elif entry.busy_slots or entry.queued_jobs:
            entry.desired_workers = max(1, math.ceil((entry.busy_slots + excess) / per_worker))
    return models


def scaling_view(table: LivenessTable) -> dict:
    """/status/scaling: {"models": {model: {workers, slots, busy_slots, queued_jobs, drain_per_s, desired_workers}}}."""
    return {"target_wait_s": TARGET_WAIT_S, "models": {model: asdict(entry) for model, entry in sorted(demand(table).items())}}

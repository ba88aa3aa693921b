"""Cache-aware dispatch: which worker a job should go to, when one already holds the start of its prompt.

Workers announce, in their heartbeats, the prefix keys (common/prefix_keys.py) of prompts whose blocks
their prefix cache holds. A new job goes to the live worker of its version that announces the longest
run of the job's keys and has a free slot (by its last heartbeat); ties go to the worker with more
free slots. The job is then queued on that worker's own subject (subjects.jobs_for), which the worker
pulls before the shared queue of the same level; if it has not taken the job within a short bound,
any other worker may (job_puller.py). A continuation of a migrated request always goes to the shared
queue: its worker may be the one that just died.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.common.liveness import LivenessTable
from llmserve.common.prefix_keys import job_prefix_keys
from llmserve.v1 import events_pb2


@dataclass
class _Announced:
    # The heartbeat the keys were read from (a new beat replaces the set).
    beat: events_pb2.Heartbeat
    keys: frozenset[int] = field(default_factory=frozenset)


class PrefixDispatch:
    def __init__(self, liveness: LivenessTable) -> None:
        self._liveness = liveness
        self._announced: dict[str, _Announced] = {}

    def _keys_of(self, beat: events_pb2.Heartbeat) -> frozenset[int]:
        known = self._announced.get(beat.instance_id)
        if known is None or known.beat is not beat:
            known = _Announced(beat, frozenset(beat.prefix_keys))
            self._announced[beat.instance_id] = known
        return known.keys

    def choose(self, job: events_pb2.Job) -> str | None:
        """The instance id of the worker the job should go to, or None for the shared queue."""
        if job.attempt > 0:
            return None
        keys = job_prefix_keys(job)
        if not keys:
            return None
        best: tuple[int, int, str] | None = None
        workers = self._liveness.live_workers(job.model, job.model_version)
        for beat in workers:
            free = beat.slots_total - beat.slots_busy
            held = self._keys_of(beat)
            if free <= 0 or not held:
                continue
            matched = next((i + 1 for i in range(len(keys) - 1, -1, -1) if keys[i] in held), 0)
            if matched and (best is None or (matched, free) > best[:2]):
                best = (matched, free, beat.instance_id)
        # Forget workers that died (not those of other versions, which the next job may need).
        live = {beat.instance_id for beat in self._liveness.live_workers()}
        for gone in set(self._announced) - live:
            del self._announced[gone]
        return best[2] if best else None

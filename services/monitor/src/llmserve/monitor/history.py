"""The last minutes of the cluster's load, at a coarse step, for the status page's charts.

Every `step_s` the monitor samples its heartbeat table into one point per model: tokens/s (the rate
of the workers' generated-token counters), time to first token p50/p95 (from the routers' cumulative
TTFT buckets: the step's new requests only, merged across routers, interpolated within a bucket as
Prometheus's histogram_quantile does), queue depth (the largest any scheduler saw: they all read the
one shared queue) and busy/total slots. Probe results are kept per version as they come. Nothing is
stored outside the process: a restarted monitor starts with an empty history.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

from llmserve.common.liveness import LivenessTable
from llmserve.monitor.probes import ProbeResult
from llmserve.v1 import events_pb2


@dataclass
class ModelPoint:
    # None when nothing was measured in the step (the first step, or no request reached a first token).
    tokens_per_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    queued: int = 0
    slots_busy: int = 0
    slots_total: int = 0


@dataclass
class Point:
    at: float
    models: dict[str, ModelPoint] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeMark:
    at: float
    ok: bool
    latency_s: float


def histogram_quantile(q: float, bounds: list[float], cumulative: list[int]) -> float | None:
    """The q-quantile of a histogram with cumulative counts per upper bound (one more count at the end
    for +Inf); None when it is empty. Observations above the last bound count as that bound."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[i - 1] if i > 0 else 0.0
            below = cumulative[i - 1] if i > 0 else 0
            if count == below:
                return bounds[i]
            return lower + (bounds[i] - lower) * (rank - below) / (count - below)
    return bounds[-1] if bounds else None


class LoadHistory:
    def __init__(self, step_s: float = 5.0, window_s: float = 900.0) -> None:
        self.step_s = step_s
        self.window_s = window_s
        self.points: deque[Point] = deque(maxlen=max(2, math.ceil(window_s / step_s)))
        self.probes: dict[str, deque[ProbeMark]] = {}
        self._last_at: float | None = None
        # Last counter readings: generated tokens by worker, TTFT buckets by (router, model).
        self._tokens: dict[str, int] = {}
        self._ttft: dict[tuple[str, str], tuple[list[float], list[int]]] = {}

    def sample(self, table: LivenessTable, probe_results: dict[str, ProbeResult], now: float) -> Point:
        elapsed = now - self._last_at if self._last_at is not None else None
        self._last_at = now
        point = Point(at=now)
        live = table.live()

        def model(name: str) -> ModelPoint:
            return point.models.setdefault(name, ModelPoint())

        tokens: dict[str, int] = {}
        seen_tokens: dict[str, int] = {}
        for beat in live:
            if beat.kind == events_pb2.INSTANCE_KIND_WORKER and beat.model:
                entry = model(beat.model)
                entry.slots_busy += beat.slots_busy
                entry.slots_total += beat.slots_total
                before = self._tokens.get(beat.instance_id)
                seen_tokens[beat.instance_id] = beat.generated_tokens_total
                # A worker seen for the first time (or restarted under its id) gives its baseline only.
                if before is not None and beat.generated_tokens_total >= before:
                    tokens[beat.model] = tokens.get(beat.model, 0) + beat.generated_tokens_total - before
                else:
                    tokens.setdefault(beat.model, 0)
            elif beat.kind == events_pb2.INSTANCE_KIND_SCHEDULER:
                for load in beat.model_loads:
                    entry = model(load.model)
                    entry.queued = max(entry.queued, load.queued_jobs)
        self._tokens = seen_tokens
        if elapsed:
            for name, count in tokens.items():
                model(name).tokens_per_s = count / elapsed
        self._sample_ttft(live, model)
        self.points.append(point)
        for key, result in probe_results.items():
            marks = self.probes.setdefault(key, deque())
            if not marks or marks[-1].at != result.at:
                marks.append(ProbeMark(result.at, result.ok, result.latency_s))
        for marks in self.probes.values():
            while marks and marks[0].at < now - self.window_s:
                marks.popleft()
        return point

    def _sample_ttft(self, live: list[events_pb2.Heartbeat], model) -> None:
        merged: dict[str, tuple[list[float], list[int]]] = {}
        readings: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
        for beat in live:
            if beat.kind != events_pb2.INSTANCE_KIND_ROUTER:
                continue
            for load in beat.model_loads:
                bounds, counts = list(load.ttft_bucket_bounds_s), list(load.ttft_bucket_counts)
                if len(counts) != len(bounds) + 1:
                    continue
                key = (beat.instance_id, load.model)
                readings[key] = (bounds, counts)
                before = self._ttft.get(key)
                if before is None or before[0] != bounds or any(a < b for a, b in zip(counts, before[1], strict=True)):
                    continue  # first reading of this router, or it restarted: a baseline only
                delta = [a - b for a, b in zip(counts, before[1], strict=True)]
                if load.model in merged and merged[load.model][0] == bounds:
                    merged[load.model] = (bounds, [a + b for a, b in zip(merged[load.model][1], delta, strict=True)])
                elif load.model not in merged:
                    merged[load.model] = (bounds, delta)
        self._ttft = readings
        for name, (bounds, delta) in merged.items():
            entry = model(name)
            entry.ttft_p50_s = histogram_quantile(0.5, bounds, delta)
            entry.ttft_p95_s = histogram_quantile(0.95, bounds, delta)

    def view(self) -> dict:
        """JSON form: {"step_s", "window_s", "points": [{"at", "models": {name: {...}}}], "probes": {"model vN": [...]}}."""
        return {
            "step_s": self.step_s,
            "window_s": self.window_s,
            "points": [{"at": p.at, "models": {name: asdict(m) for name, m in p.models.items()}} for p in self.points],
            "probes": {key: [asdict(mark) for mark in marks] for key, marks in self.probes.items()},
        }

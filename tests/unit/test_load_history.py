"""The monitor's load history (rates and quantiles from heartbeat counters) and its SVG charts."""

import re

import pytest

from llmserve.common.liveness import LivenessTable
from llmserve.monitor.charts import Series, history_section, line_chart
from llmserve.monitor.history import LoadHistory, histogram_quantile
from llmserve.monitor.probes import ProbeResult
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit

BOUNDS = [0.1, 0.5, 1.0]


def worker(iid: str, tokens: int, busy: int = 1, total: int = 4, model: str = "m") -> events_pb2.Heartbeat:
    return events_pb2.Heartbeat(instance_id=iid, kind=events_pb2.INSTANCE_KIND_WORKER, model=model, model_version=1,
                                slots_busy=busy, slots_total=total, generated_tokens_total=tokens)


def router(iid: str, counts: list[int], model: str = "m") -> events_pb2.Heartbeat:
    beat = events_pb2.Heartbeat(instance_id=iid, kind=events_pb2.INSTANCE_KIND_ROUTER)
    beat.model_loads.add(model=model, ttft_bucket_bounds_s=BOUNDS, ttft_bucket_counts=counts)
    return beat


def scheduler(iid: str, queued: int, model: str = "m") -> events_pb2.Heartbeat:
    beat = events_pb2.Heartbeat(instance_id=iid, kind=events_pb2.INSTANCE_KIND_SCHEDULER)
    beat.model_loads.add(model=model, queued_jobs=queued)
    return beat


def table_of(*beats) -> LivenessTable:
    table = LivenessTable(dead_after_s=60)
    for beat in beats:
        table.observe(beat)
    return table


def test_histogram_quantile_interpolates_within_a_bucket():
    # 10 requests: 4 under 0.1 s, 6 between 0.1 and 0.5 s.
    assert histogram_quantile(0.5, BOUNDS, [4, 10, 10, 10]) == pytest.approx(0.1 + 0.4 * (5 - 4) / 6)
    assert histogram_quantile(0.2, BOUNDS, [4, 10, 10, 10]) == pytest.approx(0.05)
    assert histogram_quantile(0.95, BOUNDS, [0, 0, 0, 3]) == 1.0  # past the last bound: that bound
    assert histogram_quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None


def test_tokens_per_second_is_the_rate_of_the_workers_counters():
    history = LoadHistory(step_s=5)
    first = history.sample(table_of(worker("w1", 1000), worker("w2", 50)), {}, now=100.0)
    assert first.models["m"].tokens_per_s is None  # a baseline only
    second = history.sample(table_of(worker("w1", 1100), worker("w2", 150, busy=3)), {}, now=105.0)
    assert second.models["m"].tokens_per_s == pytest.approx(40.0)
    assert (second.models["m"].slots_busy, second.models["m"].slots_total) == (4, 8)
    # A restarted worker (a counter that went back) gives a new baseline, not a negative rate.
    third = history.sample(table_of(worker("w1", 10), worker("w2", 200)), {}, now=110.0)
    assert third.models["m"].tokens_per_s == pytest.approx(10.0)


def test_ttft_quantiles_come_from_the_steps_new_requests_of_every_router():
    history = LoadHistory(step_s=5)
    history.sample(table_of(router("r1", [100, 100, 100, 100]), router("r2", [0, 0, 0, 0])), {}, now=0.0)
    # Since then: r1 had 2 requests between 0.5 and 1 s, r2 had 2 more; 100 old fast ones do not count.
    point = history.sample(table_of(router("r1", [100, 100, 102, 102]), router("r2", [0, 0, 2, 2])), {}, now=5.0)
    assert 0.5 < point.models["m"].ttft_p50_s < 1.0
    assert point.models["m"].ttft_p95_s == pytest.approx(0.5 + 0.5 * (0.95 * 4) / 4)
    quiet = history.sample(table_of(router("r1", [100, 100, 102, 102]), router("r2", [0, 0, 2, 2])), {}, now=10.0)
    assert quiet.models.get("m") is None or quiet.models["m"].ttft_p50_s is None


def test_queue_depth_is_the_largest_any_scheduler_saw_not_the_sum():
    history = LoadHistory()
    point = history.sample(table_of(scheduler("s1", 7), scheduler("s2", 6)), {}, now=0.0)
    assert point.models["m"].queued == 7


def test_the_window_keeps_fifteen_minutes_of_points_and_probes():
    history = LoadHistory(step_s=5, window_s=900)
    for i in range(200):
        probe = ProbeResult(model="m", version=1, ok=i % 2 == 0, latency_s=0.2, detail="", at=float(i * 60))
        history.sample(table_of(worker("w", i)), {"m v1": probe}, now=float(i * 60))
    assert len(history.points) == 180
    marks = history.probes["m v1"]
    assert marks[-1].at == 199 * 60 and all(m.at >= 199 * 60 - 900 for m in marks)


def test_a_chart_draws_one_line_per_series_and_breaks_it_at_gaps():
    svg = line_chart("tokens/s", [Series("", "#000", [1.0, 2.0, None, 3.0, 4.0])], slots=10)
    assert svg.count("<polyline") == 2
    assert "max 4" in svg
    # A short history is drawn at the right end of the chart.
    xs = [float(x) for x in re.findall(r'([\d.]+),[\d.]+', svg)]
    assert max(xs) == pytest.approx(300.0)


def test_the_history_section_has_four_charts_per_model_and_a_probe_strip():
    history = LoadHistory(step_s=5)
    for t in (0.0, 5.0, 10.0):
        probe = ProbeResult(model="m", version=1, ok=True, latency_s=0.2, detail="", at=t)
        history.sample(table_of(worker("w", int(t * 10)), scheduler("s", 1), router("r", [0, int(t), int(t), int(t)])), {"m v1": probe}, now=t)
    section = history_section(history, now=10.0)
    assert section.count('<svg class="chart"') == 4
    assert section.count('class="probe ok"') == 3
    assert "m v1" in section and "Last 15 minutes" in section

import pytest

from llmserve.monitor.slo_rules import SloRules, Thresholds
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit


def beat(total: int, failed: int, ttft: float = 0.2) -> events_pb2.Heartbeat:
    return events_pb2.Heartbeat(
        instance_id="r1", kind=events_pb2.INSTANCE_KIND_ROUTER, requests_total=total, requests_failed=failed, recent_ttft_p50_s=ttft
    )


def test_error_rate_alert_fires_once_and_again_after_recovery():
    rules = SloRules(Thresholds(error_rate=0.1, min_requests=10, window_s=60))
    assert rules.check(beat(0, 0), 0) == []
    assert rules.check(beat(50, 1), 10) == []  # 2%
    (alert,) = rules.check(beat(100, 20), 20)  # 19 of 100 in the window
    assert alert[0] == "error_rate" and alert[2]["requests"] == 100
    assert rules.check(beat(110, 25), 30) == []  # still failing: not raised twice
    assert rules.check(beat(1000, 25), 100) == []  # recovered (the window moved on)
    assert [a[0] for a in rules.check(beat(1100, 125), 110)] == ["error_rate"]


def test_too_few_requests_say_nothing():
    rules = SloRules(Thresholds(error_rate=0.1, min_requests=20))
    rules.check(beat(0, 0), 0)
    assert rules.check(beat(5, 5), 1) == []


def test_slow_first_tokens_raise_a_latency_alert():
    rules = SloRules(Thresholds(ttft_p50_s=2.0))
    assert rules.check(beat(1, 0, ttft=0.5), 0) == []
    assert [a[0] for a in rules.check(beat(2, 0, ttft=3.0), 1)] == ["latency"]


def test_workers_are_not_judged_by_router_rules():
    rules = SloRules(Thresholds())
    worker = events_pb2.Heartbeat(instance_id="w", kind=events_pb2.INSTANCE_KIND_WORKER, recent_ttft_p50_s=99)
    assert rules.check(worker, 0) == []

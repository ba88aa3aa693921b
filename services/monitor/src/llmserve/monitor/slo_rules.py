"""Alert rules on the routers' own figures (carried in their heartbeats): error rate and latency."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from llmserve.v1 import events_pb2


@dataclass(frozen=True)
class Thresholds:
    # Share of requests failing on the server's side, over the window, above which an alert fires.
    error_rate: float = 0.05
    # Fewer requests than this in the window say nothing about a rate.
    min_requests: int = 20
    # Median time to first token above which an alert fires, in seconds.
    ttft_p50_s: float = 10.0
    # Seconds of history the error rate is computed over.
    window_s: float = 60.0


class SloRules:
    """Fires an alert when a rule starts failing for a router, and again only after it has recovered."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._history: dict[str, deque[tuple[float, int, int]]] = {}
        self._firing: set[tuple[str, str]] = set()

    def check(self, beat: events_pb2.Heartbeat, now: float) -> list[tuple[str, str, dict]]:
        """Alerts (kind, summary, details) this beat starts; empty when nothing new fails."""
        if beat.kind != events_pb2.INSTANCE_KIND_ROUTER:
            return []
        t = self.thresholds
        history = self._history.setdefault(beat.instance_id, deque())
        history.append((now, beat.requests_total, beat.requests_failed))
        while len(history) > 1 and now - history[0][0] > t.window_s:
            history.popleft()
        _, total0, failed0 = history[0]
        requests, failures = beat.requests_total - total0, beat.requests_failed - failed0
        rate = failures / requests if requests else 0.0
        alerts = []
        error_failing = requests >= t.min_requests and rate > t.error_rate
        if self._transition("error_rate", beat.instance_id, error_failing):
            alerts.append(
                ("error_rate", f"{beat.instance_id}: {rate:.0%} of {requests} requests failed in the last {t.window_s:.0f} s",
                 {"instance": beat.instance_id, "error_rate": round(rate, 3), "requests": requests})
            )
        slow = beat.recent_ttft_p50_s > t.ttft_p50_s
        if self._transition("latency", beat.instance_id, slow):
            alerts.append(
                ("latency", f"{beat.instance_id}: median time to first token {beat.recent_ttft_p50_s:.1f} s (limit {t.ttft_p50_s:.1f} s)",
                 {"instance": beat.instance_id, "ttft_p50_s": round(beat.recent_ttft_p50_s, 3)})
            )
        return alerts

    def _transition(self, rule: str, instance: str, failing: bool) -> bool:
        key = (rule, instance)
        if failing and key not in self._firing:
            self._firing.add(key)
            return True
        if not failing:
            self._firing.discard(key)
        return False

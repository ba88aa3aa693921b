"""Prometheus metrics of the router (served at GET /metrics on the REST port)."""

from __future__ import annotations

import statistics
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "llmserve_router_requests_total",
    "Requests finished, by API (grpc, rest) and outcome (ok, cancelled, or the error code).",
    ["api", "outcome"],
)
IN_FLIGHT = Gauge("llmserve_router_requests_in_flight", "Requests between submission and their last chunk.")
TIME_TO_FIRST_TOKEN = Histogram(
    "llmserve_router_time_to_first_token_seconds", "From submission to the first chunk, queueing included.", buckets=_LATENCY_BUCKETS
)
INTER_TOKEN_LATENCY = Histogram(
    "llmserve_router_inter_token_latency_seconds",
    "Time between two chunks of one stream.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REQUEST_DURATION = Histogram(
    "llmserve_router_request_duration_seconds", "From submission to the last chunk.", buckets=_LATENCY_BUCKETS
)
GENERATED_TOKENS = Counter("llmserve_router_generated_tokens_total", "Completion tokens delivered to clients.")
MIGRATIONS = Counter(
    "llmserve_router_migrations_total", "Requests resumed on another worker (worker dead, stalled or draining)."
)


class RecentStats:
    """What the router reports in its heartbeats: request and failure counts, and recent TTFT."""

    # Outcomes that are the service's fault, not the client's.
    SERVER_FAILURES = frozenset({"unavailable", "deadline_exceeded", "internal", "error"})

    def __init__(self, window: int = 200) -> None:
        self.total = 0
        self.failed = 0
        self._ttfts: deque[float] = deque(maxlen=window)

    def finished(self, outcome: str) -> None:
        self.total += 1
        if outcome in self.SERVER_FAILURES:
            self.failed += 1

    def first_token(self, seconds: float) -> None:
        self._ttfts.append(seconds)

    def ttft_p50(self) -> float:
        return statistics.median(self._ttfts) if self._ttfts else 0.0


RECENT = RecentStats()

"""Prometheus metrics of the scheduler (served when LLMSERVE_SCHEDULER_METRICS_ADDR is set)."""

from __future__ import annotations

from prometheus_client import Counter

SUBMISSIONS = Counter(
    "llmserve_scheduler_submissions_total",
    "Submissions by outcome: queued, duplicate, or the reason for rejecting them.",
    ["model", "outcome"],
)

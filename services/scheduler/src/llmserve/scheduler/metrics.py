"""Prometheus metrics of the scheduler (served when LLMSERVE_SCHEDULER_METRICS_ADDR is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SUBMISSIONS = Counter(
    "llmserve_scheduler_submissions_total",
    "Submissions by outcome: queued, duplicate, or the reason for rejecting them.",
    ["model", "outcome"],
)
QUEUED_JOBS = Gauge("llmserve_scheduler_queued_jobs", "Jobs waiting in the JetStream queue, all models and priorities.")

"""Prometheus metrics of the scheduler (served when LLMSERVE_SCHEDULER_METRICS_ADDR is set).

Time in queue is measured where a job leaves the queue: the workers' llmserve_worker_queue_time_seconds.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SUBMISSIONS = Counter(
    "llmserve_scheduler_submissions_total",
    "Submissions by outcome: queued, duplicate, or the reason for rejecting them.",
    ["model", "outcome"],
)
REJECTIONS = Counter(
    "llmserve_scheduler_rejections_total",
    "Rejected submissions by reason: queue_full, tenant_limit, unavailable, deadline_exceeded, not_found, invalid_argument, internal.",
    ["model", "reason"],
)
QUEUED_JOBS = Gauge("llmserve_scheduler_queued_jobs", "Jobs waiting in the JetStream queues, all models and priorities.")
QUEUE_DEPTH = Gauge(
    "llmserve_scheduler_queue_depth", "Jobs waiting in the queue, by model, version and priority level.", ["model", "version", "priority"]
)
PREFERRED_DISPATCHES = Counter(
    "llmserve_scheduler_preferred_dispatches_total",
    "Jobs queued for the worker whose prefix cache holds the start of their prompt (cache-aware dispatch).",
    ["model"],
)
TENANT_RELEASES = Counter("llmserve_scheduler_tenant_releases_total", "Requests whose end freed their tenant's share.")
DIRECT_HANDOFFS = Counter(
    "llmserve_scheduler_direct_handoffs_total",
    "Jobs handed straight to a worker because the job queue had no stream leader (a NATS server of a cluster died).",
    ["model"],
)
CONSUMER_LEADER_MOVES = Counter(
    "llmserve_scheduler_consumer_leader_moves_total",
    "Job-queue consumers whose leadership was moved to their stream's leader (on a NATS cluster; see leaders.py).",
    ["stream"],
)

"""Prometheus metrics of a model worker (served when LLMSERVE_WORKER_METRICS_ADDR is set)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

JOBS = Counter(
    "llmserve_worker_jobs_total", "Jobs finished, by outcome (stop, length, cancelled, error, rejected, failed, expired).", ["outcome"]
)
QUEUE_TIME = Histogram(
    "llmserve_worker_queue_time_seconds",
    "From the router accepting a request to this worker taking it (time in queue), by priority level.",
    ["priority"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GENERATED_TOKENS = Counter("llmserve_worker_generated_tokens_total", "Tokens generated (counted as they are generated, cancelled requests too).")
PREFIX_QUERIED_TOKENS = Counter(
    "llmserve_worker_prefix_cache_queried_tokens_total", "Prompt tokens of new requests looked up in the prefix cache."
)
PREFIX_HIT_TOKENS = Counter(
    "llmserve_worker_prefix_cache_hit_tokens_total", "Of those, tokens whose keys and values came from the prefix cache (not computed)."
)
PREFIX_CACHE_BYTES = Gauge("llmserve_worker_prefix_cache_bytes", "Memory held by the prefix cache's blocks.")
PREEMPTIONS = Counter(
    "llmserve_worker_preemptions_total",
    "Running sequences preempted for a waiting request of a higher priority, by cause (slots: every slot was busy; "
    "kv_budget: the KV budget was reserved) and by how they resume (kept: their keys and values were kept; recompute).",
    ["cause", "resume"],
)
SLOTS_TOTAL = Gauge("llmserve_worker_slots", "Sequences this worker can run at once.")
SLOTS_BUSY = Gauge("llmserve_worker_slots_busy", "Sequences this worker is running or admitting.")
KV_RESERVED = Gauge("llmserve_worker_kv_reserved_tokens", "KV-cache positions reserved by admitted sequences.")
KV_USAGE = Gauge(
    "llmserve_worker_kv_cache_usage_ratio", "KV-cache positions reserved as a share of the engine's capacity (0 to 1)."
)
NUMERICS = Gauge(
    "llmserve_worker_numerics_info", "1 for the numeric mode the served version's weights run in (int8, float32, bfloat16, float16).", ["numerics"]
)


def set_numerics(mode: str) -> None:
    """Exactly one mode is 1 at a time (a hot swap to another version may change it)."""
    for labels in list(NUMERICS._metrics):
        if labels != (mode,):
            NUMERICS.remove(*labels)
    NUMERICS.labels(numerics=mode).set(1)


def generated_tokens_total() -> int:
    """The GENERATED_TOKENS counter's value, for heartbeats (the monitor's tokens/s chart)."""
    return int(REGISTRY.get_sample_value("llmserve_worker_generated_tokens_total") or 0)

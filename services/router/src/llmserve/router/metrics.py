"""Prometheus metrics of the router (served at GET /metrics on the REST port)."""

from __future__ import annotations

import statistics
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

from llmserve.common.tenants import ANONYMOUS
from llmserve.v1 import events_pb2

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

REQUESTS = Counter(
    "llmserve_router_requests_total",
    "Requests finished, by model, API (grpc, rest) and outcome (ok, cancelled, or the error code).",
    ["model", "api", "outcome"],
)
IN_FLIGHT = Gauge("llmserve_router_requests_in_flight", "Requests between submission and their last chunk.")
TIME_TO_FIRST_TOKEN = Histogram(
    "llmserve_router_time_to_first_token_seconds",
    "From submission to the first chunk, queueing included, by model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "llmserve_router_inter_token_latency_seconds",
    "Time between two chunks of one stream, by model.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REQUEST_DURATION = Histogram(
    "llmserve_router_request_duration_seconds", "From submission to the last chunk, by model.", ["model"], buckets=_LATENCY_BUCKETS
)
PROMPT_TOKENS = Counter("llmserve_router_prompt_tokens_total", "Prompt tokens of finished requests, by model.", ["model"])
GENERATED_TOKENS = Counter("llmserve_router_generated_tokens_total", "Completion tokens delivered to clients, by model.", ["model"])
PROMPT_LENGTH = Histogram(
    "llmserve_router_prompt_length_tokens", "Prompt tokens per finished request, by model.", ["model"], buckets=_TOKEN_BUCKETS
)
GENERATION_LENGTH = Histogram(
    "llmserve_router_generation_length_tokens", "Completion tokens per finished request, by model.", ["model"], buckets=_TOKEN_BUCKETS
)
MIGRATIONS = Counter(
    "llmserve_router_migrations_total",
    "Requests resumed on another worker, by model and cause (worker_dead, stalled, handed_back).",
    ["model", "cause"],
)
QUARANTINED = Counter(
    "llmserve_router_quarantined_requests_total",
    "Requests stopped because their workers died or stalled twice while running them (a \"query of death\"), by model.",
    ["model"],
)
TENANT_REQUESTS = Counter(
    "llmserve_router_tenant_requests_total",
    "Requests finished per tenant (the first 100 tenants a router sees by name, later ones as _other).",
    ["tenant"],
)
TENANT_TOKENS = Counter(
    "llmserve_router_tenant_tokens_total", "Prompt and completion tokens per tenant (same naming as the requests).", ["tenant"]
)

RATE_LIMITED = Counter(
    "llmserve_router_rate_limited_total",
    "Requests refused because their API key was over a limit, per tenant and limit (requests_per_minute, tokens_per_minute).",
    ["tenant", "limit"],
)
AUTH_FAILURES = Counter(
    "llmserve_router_auth_failures_total",
    "Calls refused for their API key, by reason (invalid_api_key, key_revoked, key_expired, permission_denied).",
    ["reason"],
)

# Tenants get their own label value up to this many per router process; later ones share OTHER_TENANTS,
# so a client inventing tenant names cannot grow the series without bound.
TENANT_LABEL_CAP = 100
OTHER_TENANTS = "_other"
_named_tenants: set[str] = set()


def tenant_label(tenant: str) -> str:
    tenant = tenant or ANONYMOUS
    if tenant in _named_tenants:
        return tenant
    if len(_named_tenants) < TENANT_LABEL_CAP:
        _named_tenants.add(tenant)
        return tenant
    return OTHER_TENANTS


def request_finished(model: str, api: str, tenant: str, outcome: str, usage) -> None:
    """Counts one finished request (usage: the final chunk's, or None when it had none)."""
    REQUESTS.labels(model=model, api=api, outcome=outcome).inc()
    label = tenant_label(tenant)
    TENANT_REQUESTS.labels(tenant=label).inc()
    if usage is not None:
        PROMPT_TOKENS.labels(model=model).inc(usage.prompt_tokens)
        PROMPT_LENGTH.labels(model=model).observe(usage.prompt_tokens)
        GENERATION_LENGTH.labels(model=model).observe(usage.completion_tokens)
        TENANT_TOKENS.labels(tenant=label).inc(usage.prompt_tokens + usage.completion_tokens)


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


def ttft_loads() -> list[events_pb2.ModelLoad]:
    """Each model's cumulative time-to-first-token buckets, for the router's heartbeat."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in TIME_TO_FIRST_TOKEN.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sample.labels["model"], []).append((float(sample.labels["le"]), sample.value))
    loads = []
    for model, pairs in sorted(buckets.items()):
        pairs.sort()
        loads.append(
            events_pb2.ModelLoad(
                model=model,
                ttft_bucket_bounds_s=[bound for bound, _ in pairs[:-1]],  # the last bound is +Inf
                ttft_bucket_counts=[int(count) for _, count in pairs],
            )
        )
    return loads

"""Settings of the scheduler, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_float, env_int, env_str
from llmserve.common.tenants import priority_level
from llmserve.v1 import common_pb2


@dataclass(frozen=True)
class SchedulerSettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_SCHEDULER_MAX_QUEUED: jobs one model's queue holds at most (all its versions and
    # priorities); past it submissions are rejected with RESOURCE_EXHAUSTED and a Retry-After.
    max_queued: int = 1000
    # LLMSERVE_SCHEDULER_TENANT_MAX_ACTIVE: requests one tenant may have queued or running at once
    # (0: no limit); `llmserve tenants set` overrides it per tenant.
    tenant_max_active: int = 256
    # LLMSERVE_SCHEDULER_TENANT_MAX_PRIORITY: the highest priority a tenant may ask for (a level
    # name: low, normal, high, critical); higher requests are lowered to it. Critical is kept for
    # migrated requests and tenants given it explicitly.
    tenant_max_priority: int = common_pb2.PRIORITY_HIGH
    # LLMSERVE_SCHEDULER_LEASE_S: how long a request without a deadline counts against its tenant
    # when its end is never announced (its router crashed).
    lease_s: float = 900.0
    # LLMSERVE_SCHEDULER_METRICS_ADDR: host:port of the Prometheus /metrics endpoint; empty: off.
    metrics_addr: str = ""
    # LLMSERVE_SCHEDULER_CACHE_AWARE: 1 sends a job to the worker whose prefix cache holds the longest
    # start of its prompt (as its heartbeats announce), when it has a free slot; 0 queues every job for
    # any worker.
    cache_aware: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerSettings:
        env = os.environ if env is None else env
        return cls(
            common=CommonSettings.from_env(env),
            max_queued=env_int(env, "LLMSERVE_SCHEDULER_MAX_QUEUED", cls.max_queued),
            tenant_max_active=env_int(env, "LLMSERVE_SCHEDULER_TENANT_MAX_ACTIVE", cls.tenant_max_active),
            tenant_max_priority=priority_level(env_str(env, "LLMSERVE_SCHEDULER_TENANT_MAX_PRIORITY", "high")),
            lease_s=env_float(env, "LLMSERVE_SCHEDULER_LEASE_S", cls.lease_s),
            metrics_addr=env_str(env, "LLMSERVE_SCHEDULER_METRICS_ADDR", ""),
            cache_aware=env_int(env, "LLMSERVE_SCHEDULER_CACHE_AWARE", 1) != 0,
        )

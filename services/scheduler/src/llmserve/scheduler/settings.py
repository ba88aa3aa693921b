"""Settings of the scheduler, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_int, env_str


@dataclass(frozen=True)
class SchedulerSettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_SCHEDULER_MAX_QUEUED: jobs the queue holds at most, over all models; past it
    # submissions are rejected with RESOURCE_EXHAUSTED.
    max_queued: int = 10_000
    # LLMSERVE_SCHEDULER_METRICS_ADDR: host:port of the Prometheus /metrics endpoint; empty: off.
    metrics_addr: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerSettings:
        env = os.environ if env is None else env
        return cls(
            common=CommonSettings.from_env(env),
            max_queued=env_int(env, "LLMSERVE_SCHEDULER_MAX_QUEUED", 10_000),
            metrics_addr=env_str(env, "LLMSERVE_SCHEDULER_METRICS_ADDR", ""),
        )

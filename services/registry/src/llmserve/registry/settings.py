"""Settings of the registry service, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_float, env_int, env_str


@dataclass(frozen=True)
class RegistrySettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_REGISTRY_GRPC_ADDR: where the Registry gRPC service listens.
    grpc_addr: str = "127.0.0.1:50052"
    # LLMSERVE_REGISTRY_METRICS_ADDR: host:port of /metrics, /healthz and /readyz; empty: off.
    metrics_addr: str = ""
    # LLMSERVE_REGISTRY_WAIT_REPLICAS: a change to the registry (publish, promote, canary, rollback,
    # retire, fallback, tenant limits, keys) is answered once this many Redis replicas have it, or after
    # LLMSERVE_REGISTRY_WAIT_TIMEOUT_S; the answer says how many did (gRPC trailing metadata
    # llmserve-replicas-acknowledged). 0: no waiting (one Redis without replicas).
    wait_replicas: int = 0
    wait_timeout_s: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        env = os.environ if env is None else env
        return cls(
            common=CommonSettings.from_env(env),
            grpc_addr=env_str(env, "LLMSERVE_REGISTRY_GRPC_ADDR", cls.grpc_addr),
            metrics_addr=env_str(env, "LLMSERVE_REGISTRY_METRICS_ADDR", cls.metrics_addr),
            wait_replicas=env_int(env, "LLMSERVE_REGISTRY_WAIT_REPLICAS", cls.wait_replicas),
            wait_timeout_s=env_float(env, "LLMSERVE_REGISTRY_WAIT_TIMEOUT_S", cls.wait_timeout_s),
        )

"""Settings of the registry service, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_str


@dataclass(frozen=True)
class RegistrySettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_REGISTRY_GRPC_ADDR: where the Registry gRPC service listens.
    grpc_addr: str = "127.0.0.1:50052"
    # LLMSERVE_REGISTRY_METRICS_ADDR: host:port of /metrics, /healthz and /readyz; empty: off.
    metrics_addr: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        env = os.environ if env is None else env
        return cls(
            common=CommonSettings.from_env(env),
            grpc_addr=env_str(env, "LLMSERVE_REGISTRY_GRPC_ADDR", cls.grpc_addr),
            metrics_addr=env_str(env, "LLMSERVE_REGISTRY_METRICS_ADDR", cls.metrics_addr),
        )

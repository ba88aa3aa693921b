"""Settings of the router, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_float, env_int, env_str


@dataclass(frozen=True)
class RouterSettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_ROUTER_GRPC_ADDR: where the gRPC API listens.
    grpc_addr: str = "127.0.0.1:50051"
    # LLMSERVE_ROUTER_HTTP_ADDR: where the REST bridge (OpenAI API, health, metrics, playground) listens.
    http_addr: str = "127.0.0.1:8000"
    # LLMSERVE_ROUTER_DEFAULT_MAX_TOKENS: max_tokens of a request that sets none.
    default_max_tokens: int = 256
    # LLMSERVE_ROUTER_MAX_TOKENS_LIMIT: the most tokens one request may ask for.
    max_tokens_limit: int = 4096
    # LLMSERVE_ROUTER_SUBMIT_TIMEOUT_S: how long the scheduler may take to accept or refuse a job.
    submit_timeout_s: float = 5.0
    # LLMSERVE_ROUTER_SUBMIT_RETRY_S: how long a new request is retried while no scheduler answers
    # (one restarting, say) before it fails with UNAVAILABLE; the request's deadline bounds it too.
    submit_retry_s: float = 10.0
    # LLMSERVE_ROUTER_QUEUE_TIMEOUT_S: longest wait for the first token (queueing included) when the
    # client set no deadline.
    queue_timeout_s: float = 300.0
    # LLMSERVE_ROUTER_STALL_TIMEOUT_S: longest silence between two chunks of a running stream.
    stall_timeout_s: float = 30.0
    # LLMSERVE_ROUTER_MAX_MIGRATIONS: times one request may be resumed on another worker.
    max_migrations: int = 3
    # LLMSERVE_ADMIN_TOKEN: with LLMSERVE_AUTH=off, the bearer token of the registry admin routes
    # (/admin/v1/...); empty: routes off. With auth required the routes take admin API keys instead.
    admin_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterSettings:
        env = os.environ if env is None else env
        return cls(
            common=CommonSettings.from_env(env),
            grpc_addr=env_str(env, "LLMSERVE_ROUTER_GRPC_ADDR", cls.grpc_addr),
            http_addr=env_str(env, "LLMSERVE_ROUTER_HTTP_ADDR", cls.http_addr),
            default_max_tokens=env_int(env, "LLMSERVE_ROUTER_DEFAULT_MAX_TOKENS", cls.default_max_tokens),
            max_tokens_limit=env_int(env, "LLMSERVE_ROUTER_MAX_TOKENS_LIMIT", cls.max_tokens_limit),
            submit_timeout_s=env_float(env, "LLMSERVE_ROUTER_SUBMIT_TIMEOUT_S", cls.submit_timeout_s),
            submit_retry_s=env_float(env, "LLMSERVE_ROUTER_SUBMIT_RETRY_S", cls.submit_retry_s),
            queue_timeout_s=env_float(env, "LLMSERVE_ROUTER_QUEUE_TIMEOUT_S", cls.queue_timeout_s),
            stall_timeout_s=env_float(env, "LLMSERVE_ROUTER_STALL_TIMEOUT_S", cls.stall_timeout_s),
            max_migrations=env_int(env, "LLMSERVE_ROUTER_MAX_MIGRATIONS", cls.max_migrations),
            admin_token=env_str(env, "LLMSERVE_ADMIN_TOKEN", ""),
        )

"""Settings shared by every service, read from the environment once in each service's main()."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def redacted_url(url: str) -> str:
    """The URL without its credentials, fit for logs and records."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def default_model_store() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "llmserve" / "models"


DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class CommonSettings:
    """What every service needs to find the cluster."""

    # LLMSERVE_NATS_URL (or NATS_URL): the NATS server with JetStream; for a cluster, every server
    # as a seed, comma-separated (a client moves to another when its own goes away).
    nats_url: str = "nats://127.0.0.1:4222"
    # LLMSERVE_NATS_JS_REPLICAS: replicas of each JetStream stream (the job queues): 1 on one server,
    # 3 on a cluster of three, where a queue then survives the loss of any one server.
    nats_js_replicas: int = 1
    # LLMSERVE_REDIS_URL (or REDIS_URL): the Redis server that holds the registry (with Sentinels:
    # its database number and password still apply).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # LLMSERVE_REDIS_SENTINELS: Sentinels as host:port,host:port; set, the client connects to the
    # primary they name for LLMSERVE_REDIS_SENTINEL_MASTER, and follows a failover.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "llmserve"
    # LLMSERVE_SUBJECT_PREFIX: first token of every NATS subject, so clusters can share a server.
    subject_prefix: str = "llm"
    # LLMSERVE_KEY_PREFIX: prefix of every Redis key.
    key_prefix: str = "llm:"
    # LLMSERVE_MODEL_STORE: directory that holds the published model artifacts.
    model_store: Path = default_model_store()
    # LLMSERVE_DEFAULT_MODEL: model used when a request names none.
    default_model: str = DEFAULT_MODEL
    # LLMSERVE_HEARTBEAT_INTERVAL_S: seconds between heartbeats of every instance.
    heartbeat_interval_s: float = 1.0
    # LLMSERVE_STARTUP_TIMEOUT_S: give up (exit 1) when NATS or Redis stays unreachable this long
    # after start; 0 (the default): wait as long as it takes, not ready meanwhile.
    startup_timeout_s: float = 0.0
    # LLMSERVE_LOG_FORMAT: "json", "console", or "auto" (console on a terminal, else JSON).
    log_format: str = "auto"
    # LLMSERVE_LOG_LEVEL: debug, info, warning or error.
    log_level: str = "info"
    # LLMSERVE_AUTH: "off" (anyone who reaches the router may generate; the tenant is the x-tenant
    # header) or "required" (every call needs an API key; the tenant and limits come from the key).
    auth: str = "off"
    # LLMSERVE_ALLOW_INSECURE=1: let the router and registry listen beyond loopback with auth off.
    allow_insecure: bool = False
    # LLMSERVE_REGISTRY_ADDR: where clients of the Registry service (the CLI, the router's admin
    # routes) reach it.
    registry_addr: str = "127.0.0.1:50052"

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ValueError(f"LLMSERVE_AUTH must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if not 1 <= self.nats_js_replicas <= 5:
            raise ValueError(f"LLMSERVE_NATS_JS_REPLICAS must be 1 to 5, got {self.nats_js_replicas}")

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CommonSettings:
        env = os.environ if env is None else env
        return cls(
            nats_url=env_str(env, "LLMSERVE_NATS_URL", env_str(env, "NATS_URL", cls.nats_url)),
            nats_js_replicas=env_int(env, "LLMSERVE_NATS_JS_REPLICAS", cls.nats_js_replicas),
            redis_url=env_str(env, "LLMSERVE_REDIS_URL", env_str(env, "REDIS_URL", cls.redis_url)),
            redis_sentinels=env_str(env, "LLMSERVE_REDIS_SENTINELS", cls.redis_sentinels),
            redis_sentinel_master=env_str(env, "LLMSERVE_REDIS_SENTINEL_MASTER", cls.redis_sentinel_master),
            subject_prefix=env_str(env, "LLMSERVE_SUBJECT_PREFIX", cls.subject_prefix),
            key_prefix=env_str(env, "LLMSERVE_KEY_PREFIX", cls.key_prefix),
            model_store=Path(env_str(env, "LLMSERVE_MODEL_STORE", str(default_model_store()))),
            default_model=env_str(env, "LLMSERVE_DEFAULT_MODEL", DEFAULT_MODEL),
            heartbeat_interval_s=env_float(env, "LLMSERVE_HEARTBEAT_INTERVAL_S", 1.0),
            startup_timeout_s=env_float(env, "LLMSERVE_STARTUP_TIMEOUT_S", 0.0),
            log_format=env_str(env, "LLMSERVE_LOG_FORMAT", "auto"),
            log_level=env_str(env, "LLMSERVE_LOG_LEVEL", "info"),
            auth=env_str(env, "LLMSERVE_AUTH", "off").lower(),
            allow_insecure=env_str(env, "LLMSERVE_ALLOW_INSECURE", "0").lower() in ("1", "true", "yes"),
            registry_addr=env_str(env, "LLMSERVE_REGISTRY_ADDR", cls.registry_addr),
        )


AUTH_MODES = ("off", "required")


def is_loopback_address(addr: str) -> bool:
    """True when a listen address ("host:port") only accepts connections from this machine."""
    import ipaddress

    host = addr.rpartition(":")[0].strip("[]") if ":" in addr else addr
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, "0.0.0.0", "[::]" or "" listens beyond loopback


def refuse_insecure_listen(settings: CommonSettings, service: str, *addrs: str) -> None:
    """Exits with a clear message when a service would take requests from other machines without keys."""
    if settings.auth_required or settings.allow_insecure:
        return
    exposed = [a for a in addrs if not is_loopback_address(a)]
    if exposed:
        raise SystemExit(
            f"the {service} would listen on {', '.join(exposed)} with LLMSERVE_AUTH=off: anyone who reaches it could "
            "use it. Set LLMSERVE_AUTH=required and create API keys (`llmserve keys create`), or set "
            "LLMSERVE_ALLOW_INSECURE=1 to do this on purpose (a trusted network)."
        )

"""The Redis client every service uses: one server by URL, or the current primary named by Sentinels.

With LLMSERVE_REDIS_SENTINELS set, the client asks the Sentinels for the primary of
LLMSERVE_REDIS_SENTINEL_MASTER at every new connection; after a failover, the connections to the old
primary fail and the next ones go to the promoted replica (redis-py's SentinelConnectionPool). The
database number and password of LLMSERVE_REDIS_URL still apply. redis-py's `from_url` has no Sentinel
scheme, hence the separate settings.
"""

from __future__ import annotations

from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from llmserve.common.config import CommonSettings

# Seconds a Sentinel or the primary may take to answer before the client tries the next.
_SOCKET_TIMEOUT_S = 2.0


def sentinel_hosts(spec: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as (host, port) pairs (port 26379 when left out)."""
    hosts = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "26379")
            hosts.append((host, int(port)))
    return hosts


def redis_client(common: CommonSettings) -> aioredis.Redis:
    """A client that connects on first use (and reconnects by itself afterwards)."""
    if not common.redis_sentinels:
        return aioredis.from_url(common.redis_url)
    url = urlparse(common.redis_url)
    db = int(url.path.lstrip("/") or 0) if url.path.lstrip("/").isdigit() else 0
    sentinel = Sentinel(
        sentinel_hosts(common.redis_sentinels), socket_timeout=_SOCKET_TIMEOUT_S, sentinel_kwargs={"socket_timeout": _SOCKET_TIMEOUT_S}
    )
    return sentinel.master_for(
        common.redis_sentinel_master, socket_timeout=_SOCKET_TIMEOUT_S, db=db, password=url.password, username=url.username or None
    )

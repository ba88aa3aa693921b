"""The Redis client every service uses: one server by URL, or the current primary named by Sentinels.

With LLMSERVE_REDIS_SENTINELS set, the client asks the Sentinels for the primary of
LLMSERVE_REDIS_SENTINEL_MASTER at every new connection; after a failover, the connections to the old
primary fail and the next ones go to the promoted replica (redis-py's SentinelConnectionPool). The
database number and password of LLMSERVE_REDIS_URL still apply. redis-py's `from_url` has no Sentinel
scheme, hence the separate settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar
from urllib.parse import urlparse

import redis.asyncio as aioredis
import structlog
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmserve.common.config import CommonSettings

log = structlog.get_logger()
T = TypeVar("T")

# Seconds a Sentinel or the primary may take to answer before the client tries the next.
_SOCKET_TIMEOUT_S = 2.0
# What Redis answers while it is away or switching primaries: no connection, no answer in time, or a
# write sent to the old primary that has just become a replica.
SWITCHING_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
# How old an answer remembered from Redis may be when it stands in for Redis (LastKnown).
STALE_S = 60.0


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


class LastKnown:
    """Answers read from Redis, remembered so that they stand in while Redis is away or switching
    primaries (a Sentinel failover takes seconds): an answer at most `stale_s` old is served in place
    of the failing call; older, the error is raised as it came."""

    def __init__(self, what: str, stale_s: float = STALE_S) -> None:
        self._what = what
        self.stale_s = stale_s
        self._answers: dict[Hashable, tuple[float, object]] = {}
        self._standing_in = False

    async def read(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await call()
        except SWITCHING_ERRORS as exc:
            kept = self._answers.get(key)
            if kept is None or time.monotonic() - kept[0] > self.stale_s:
                raise
            if not self._standing_in:
                self._standing_in = True
                log.warning("redis_answer_from_memory", what=self._what, age_s=round(time.monotonic() - kept[0], 1), error=str(exc))
            return kept[1]  # type: ignore[return-value]
        if self._standing_in:
            self._standing_in = False
            log.info("redis_answering_again", what=self._what)
        self._answers[key] = (time.monotonic(), value)
        return value


async def replicated(redis: aioredis.Redis, replicas: int, timeout_s: float) -> int:
    """Waits until `replicas` replicas have everything the primary had written when called (or until
    timeout_s); returns how many have. Redis's WAIT counts only the writes of its own connection, and
    a pooled client's writes go over any connection, so this compares the replicas' acknowledged
    offsets with the primary's replication offset instead (replicas acknowledge every second, so this
    takes up to about a second)."""
    info = await redis.info("replication")
    target = int(info.get("master_repl_offset", 0))
    give_up = time.monotonic() + timeout_s
    while True:
        acked = sum(
            1 for name, replica in info.items()
            if name.startswith("slave") and isinstance(replica, dict) and int(replica.get("offset", -1)) >= target
        )
        if acked >= replicas or time.monotonic() >= give_up:
            return acked
        await asyncio.sleep(0.05)
        info = await redis.info("replication")

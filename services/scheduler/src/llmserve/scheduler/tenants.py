"""Per-tenant limits, shared by every scheduler through Redis.

A tenant (the request's x-tenant header or metadata; "anonymous" when absent) may have at most
`max_active` requests in the system at once, queued or running, and may ask for priorities up to
`max_priority`. A flooding tenant therefore holds a bounded share of the queue and the workers, and
its excess is refused at once with RESOURCE_EXHAUSTED instead of pushing everyone else back.

Each admitted request holds a lease (a member of the tenant's ZSET, scored with its expiry). The
router announces the end of every request (JobDone) and a scheduler removes the lease; a lease whose
announcement was lost (router crash) expires on its own, so a tenant's count cannot leak forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.common.natsio import JOBS_DUPLICATE_WINDOW_S
from llmserve.common.redisio import LastKnown
from llmserve.common.tenants import ANONYMOUS

log = structlog.get_logger()


# KEYS: tenant's active ZSET, tenant's limits HASH
# ARGV: now, request id, lease end, default max_active, default max_priority
# Returns {admitted (1/0), max_priority, active count after}.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limits = redis.call('HMGET', KEYS[2], 'max_active', 'max_priority')
local max_active = tonumber(limits[1] or ARGV[4])
local max_priority = tonumber(limits[2] or ARGV[5])
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {1, max_priority, count}
end
if max_active > 0 and count >= max_active then
  return {0, max_priority, count}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
-- The whole set expires with its longest lease, so tenants that went quiet leave nothing behind.
local expire_in = math.ceil(tonumber(ARGV[3]) - tonumber(ARGV[1])) + 1
if redis.call('TTL', KEYS[1]) < expire_in then
  redis.call('EXPIRE', KEYS[1], expire_in)
end
return {1, max_priority, count + 1}
"""


@dataclass(frozen=True)
class TenantLimits:
    max_active: int
    max_priority: int


def tenant_of(tenant: str) -> str:
    return tenant or ANONYMOUS


# How long an ended request's id is remembered: JetStream's duplicate window and a margin.
DONE_MEMORY_S = int(JOBS_DUPLICATE_WINDOW_S) + 30


class TenantPolicy:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, defaults: TenantLimits, lease_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._defaults = defaults
        self._lease_s = lease_s
        self._acquire = redis.register_script(_ACQUIRE)
        # Each tenant's priority cap as last read: while Redis switches primaries, requests are admitted
        # unchecked against the tenant's share, at that cap, for up to redisio.STALE_S.
        self._last_known = LastKnown("tenant shares")

    async def acquire(self, tenant: str, request_id: str, deadline: float) -> int:
        """Counts the request against its tenant; returns the highest priority the tenant may use.

        Raises RESOURCE_EXHAUSTED when the tenant already has max_active requests in the system.
        """
        tenant = tenant_of(tenant)
        now = time.time()
        lease_end = min(deadline, now + self._lease_s) if deadline else now + self._lease_s

        async def acquire_share() -> list:
            return await self._acquire(
                keys=[self._keys.tenant_active(tenant), self._keys.tenant_limits(tenant)],
                args=[f"{now:.6f}", request_id, f"{lease_end:.6f}", self._defaults.max_active, self._defaults.max_priority],
            )

        admitted, max_priority, active = await self._last_known.read(tenant, acquire_share)
        if not admitted:
            raise ServiceError.exhausted(
                f"tenant {tenant!r} already has {active} requests queued or running, its limit; retry later",
                retry_after_s=1.0,
                reason="tenant_limit",
            )
        return int(max_priority)

    async def release(self, tenant: str, request_id: str) -> None:
        """The request ended: its tenant's share is free, and its id is remembered as used for the
        duplicate window (a resubmission then gets a clear error instead of waiting for tokens)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.tenant_active(tenant_of(tenant)), request_id)
            pipe.set(self._keys.request_done(request_id), 1, ex=DONE_MEMORY_S)
            await pipe.execute()

    async def forget(self, tenant: str, request_id: str) -> None:
        """Frees the share of a request that was never queued."""
        await self._redis.zrem(self._keys.tenant_active(tenant_of(tenant)), request_id)

    async def finished(self, request_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.request_done(request_id)))

    async def active(self, tenant: str) -> int:
        key = self._keys.tenant_active(tenant_of(tenant))
        await self._redis.zremrangebyscore(key, "-inf", time.time())
        return int(await self._redis.zcard(key))

"""Tenant records: per-tenant overrides of the scheduler's limits, kept in Redis.

The scheduler (llmserve.scheduler.tenants) enforces them; `llmserve tenants` edits them.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmserve.common.errors import ServiceError
from llmserve.common.keys import TENANT_RE, RedisKeys
from llmserve.v1 import common_pb2

# Requests that name no tenant share this one.
ANONYMOUS = "anonymous"


def priority_level(name: str) -> int:
    """"high" -> PRIORITY_HIGH; a clear error for anything else."""
    try:
        level = common_pb2.Priority.Value(f"PRIORITY_{name.strip().upper()}")
    except ValueError:
        level = common_pb2.PRIORITY_UNSPECIFIED
    if level == common_pb2.PRIORITY_UNSPECIFIED:
        choices = ", ".join(n.removeprefix("PRIORITY_").lower() for n in common_pb2.Priority.keys()[1:])
        raise ValueError(f"priority must be one of {choices}, got {name!r}")
    return level


async def set_tenant_limits(
    redis: aioredis.Redis, keys: RedisKeys, tenant: str, max_active: int | None = None, max_priority: int | None = None
) -> None:
    """Overrides the defaults for one tenant (used by `llmserve tenants set`)."""
    if not TENANT_RE.match(tenant):
        raise ServiceError.invalid(f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.', '@' or '-'")
    fields: dict[str, int] = {}
    if max_active is not None:
        if max_active < 0:
            raise ServiceError.invalid("max_active must be 0 (no limit) or more")
        fields["max_active"] = max_active
    if max_priority is not None:
        if max_priority not in common_pb2.Priority.values() or max_priority == common_pb2.PRIORITY_UNSPECIFIED:
            raise ServiceError.invalid(f"max_priority {max_priority} is not a priority level")
        fields["max_priority"] = max_priority
    if not fields:
        raise ServiceError.invalid("nothing to set: give max_active and/or max_priority")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.tenant_limits(tenant), mapping=fields)
        pipe.sadd(keys.tenants, tenant)
        await pipe.execute()


async def tenant_limits(redis: aioredis.Redis, keys: RedisKeys) -> dict[str, dict[str, int]]:
    """Every tenant with overrides and its overrides."""
    out = {}
    for raw in sorted(await redis.smembers(keys.tenants)):
        tenant = raw.decode()
        out[tenant] = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.tenant_limits(tenant))).items()}
    return out

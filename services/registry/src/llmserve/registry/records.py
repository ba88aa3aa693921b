"""The registry's writes that are not about model versions: API keys, tenant limits, and their audit.

Each write and its audit entry go to Redis in one transaction; the audit entry is what the
announcer publishes on NATS, so routers forget a revoked key as soon as it is written.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common import api_keys
from llmserve.common.errors import ServiceError
from llmserve.common.keys import TENANT_RE, RedisKeys
from llmserve.v1 import common_pb2, events_pb2, registry_pb2

MAX_NAME_LENGTH = 64


def _audit(pipe, keys: RedisKeys, action: str, subject: str, actor: str) -> None:
    pipe.xadd(keys.audit, {"action": action, "model": "", "subject": subject, "actor": actor, "at": f"{time.time():.6f}"})


def _check_priority(level: int, field: str) -> None:
    if level not in common_pb2.Priority.values() or level == common_pb2.PRIORITY_UNSPECIFIED:
        raise ServiceError.invalid(f"{field} {level} is not a priority level", param=field)


def _check_tenant(tenant: str) -> None:
    if not TENANT_RE.match(tenant):
        raise ServiceError.invalid(f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.', '@' or '-'", param="tenant")


async def create_key(
    redis: aioredis.Redis, keys: RedisKeys, request: registry_pb2.CreateKeyRequest, actor: str, secret: str | None = None
) -> tuple[registry_pb2.ApiKey, str]:
    """Stores a new key (or, with `secret`, a key for that secret: used once to bootstrap a cluster's
    first admin key); returns it and its secret. An existing key for the same secret is returned as is."""
    _check_tenant(request.tenant)
    role = request.role or registry_pb2.KEY_ROLE_INFERENCE
    if role not in registry_pb2.KeyRole.values():
        raise ServiceError.invalid(f"role {role} is not a key role", param="role")
    max_priority = request.max_priority or common_pb2.PRIORITY_CRITICAL
    _check_priority(max_priority, "max_priority")
    if len(request.name) > MAX_NAME_LENGTH:
        raise ServiceError.invalid(f"name must be at most {MAX_NAME_LENGTH} characters", param="name")
    if request.expires_in_s < 0:
        raise ServiceError.invalid("expires_in_s must be 0 (never) or more", param="expires_in_s")
    secret = secret or api_keys.new_secret()
    key_id = api_keys.key_id_of(secret)
    if key_id is None:
        raise ServiceError.invalid("the secret is not an llmserve key (lsk_<12 hex digits>_<43 characters>)", param="secret")
    existing = await api_keys.read_key(redis, keys, key_id)
    if existing is not None:
        if not api_keys.matches(secret, existing[1]):
            raise ServiceError(events_pb2.ERROR_CODE_FAILED_PRECONDITION, f"key id {key_id} is taken by another secret")
        return existing[0], secret
    now = time.time()
    key = registry_pb2.ApiKey(
        id=key_id, name=request.name or key_id, tenant=request.tenant, role=role, max_priority=max_priority,
        requests_per_minute=request.requests_per_minute, tokens_per_minute=request.tokens_per_minute, created_at=now,
        expires_at=now + request.expires_in_s if request.expires_in_s else 0.0, created_by=actor,
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.api_key(key_id), mapping=api_keys.to_fields(key, api_keys.secret_hash(secret)))
        pipe.zadd(keys.api_keys, {key_id: now})
        _audit(pipe, keys, "key_create", key_id, actor)
        await pipe.execute()
    return key, secret


async def revoke_key(redis: aioredis.Redis, keys: RedisKeys, key_id: str, actor: str) -> registry_pb2.ApiKey:
    if not api_keys.KEY_ID_RE.match(key_id):
        raise ServiceError.invalid(f"{key_id!r} is not a key id (12 hex digits, as `llmserve keys list` shows)", param="id")
    found = await api_keys.read_key(redis, keys, key_id)
    if found is None:
        raise ServiceError.not_found(f"no API key {key_id}")
    key = found[0]
    if not key.revoked_at:
        key.revoked_at = time.time()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.api_key(key_id), "revoked_at", f"{key.revoked_at:.6f}")
            _audit(pipe, keys, "key_revoke", key_id, actor)
            await pipe.execute()
    return key


async def set_tenant_limits(redis: aioredis.Redis, keys: RedisKeys, limits: registry_pb2.TenantLimits, actor: str) -> registry_pb2.TenantLimits:
    """Overrides the scheduler's defaults for one tenant; fields left unset keep their value."""
    _check_tenant(limits.tenant)
    fields: dict[str, int] = {}
    if limits.HasField("max_active"):
        fields["max_active"] = limits.max_active
    if limits.max_priority:
        _check_priority(limits.max_priority, "max_priority")
        fields["max_priority"] = limits.max_priority
    if not fields:
        raise ServiceError.invalid("nothing to set: give max_active and/or max_priority")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.tenant_limits(limits.tenant), mapping=fields)
        pipe.sadd(keys.tenants, limits.tenant)
        _audit(pipe, keys, "tenant_limits", limits.tenant, actor)
        await pipe.execute()
    return await _tenant_limits(redis, keys, limits.tenant)


async def _tenant_limits(redis: aioredis.Redis, keys: RedisKeys, tenant: str) -> registry_pb2.TenantLimits:
    fields = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.tenant_limits(tenant))).items()}
    limits = registry_pb2.TenantLimits(tenant=tenant, max_priority=fields.get("max_priority", 0))
    if "max_active" in fields:
        limits.max_active = fields["max_active"]
    return limits


async def list_tenants(redis: aioredis.Redis, keys: RedisKeys) -> list[registry_pb2.TenantLimits]:
    return [await _tenant_limits(redis, keys, raw.decode()) for raw in sorted(await redis.smembers(keys.tenants))]


async def audit_reinit(redis: aioredis.Redis, keys: RedisKeys, registry_id: str, actor: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        _audit(pipe, keys, "reinit", registry_id, actor)
        await pipe.execute()

"""API keys: the secret's format, its hash, and reading a key's record from Redis.

A secret is `lsk_<id>_<random>`: a 12-hex-digit public id (the Redis lookup key, safe to log) and
32 random bytes. Redis keeps only SHA-256 of the whole secret. A plain (unsalted, fast) hash is
enough here, unlike for passwords: the secret is 256 bits of randomness, so nobody who reads the
hash can search for the secret, and a fast hash keeps checking a request to microseconds.
Comparisons are constant-time (hmac.compare_digest).

Only the Registry service writes key records (llmserve.registry.records); routers read them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

import redis.asyncio as aioredis

from llmserve.common.keys import RedisKeys
from llmserve.v1 import common_pb2, registry_pb2

PREFIX = "lsk_"
SECRET_RE = re.compile(r"^lsk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# Longer Authorization values are refused before any work is done with them.
MAX_HEADER_LENGTH = 256


def new_secret() -> str:
    return f"{PREFIX}{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def key_id_of(secret: str) -> str | None:
    """The public id inside a well-formed secret, None for anything else."""
    match = SECRET_RE.match(secret)
    return match.group(1) if match else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret).encode(), stored_hash.encode())


def role_name(role: int) -> str:
    return registry_pb2.KeyRole.Name(role).removeprefix("KEY_ROLE_").lower()


def to_fields(key: registry_pb2.ApiKey, sha256: str) -> dict[str, str]:
    return {
        "id": key.id, "name": key.name, "tenant": key.tenant, "role": str(key.role), "max_priority": str(key.max_priority),
        "requests_per_minute": str(key.requests_per_minute), "tokens_per_minute": str(key.tokens_per_minute),
        "created_at": f"{key.created_at:.6f}", "expires_at": f"{key.expires_at:.6f}", "revoked_at": f"{key.revoked_at:.6f}",
        "created_by": key.created_by, "sha256": sha256,
    }


def from_fields(raw: dict[bytes, bytes]) -> tuple[registry_pb2.ApiKey, str]:
    """A stored record (as HGETALL returns it) as (ApiKey, sha256 of its secret)."""
    f = {k.decode(): v.decode() for k, v in raw.items()}
    key = registry_pb2.ApiKey(
        id=f["id"], name=f.get("name", ""), tenant=f.get("tenant", ""), role=int(f.get("role") or 0),
        max_priority=int(f.get("max_priority") or common_pb2.PRIORITY_CRITICAL),
        requests_per_minute=int(f.get("requests_per_minute") or 0), tokens_per_minute=int(f.get("tokens_per_minute") or 0),
        created_at=float(f.get("created_at") or 0), expires_at=float(f.get("expires_at") or 0),
        revoked_at=float(f.get("revoked_at") or 0), created_by=f.get("created_by", ""),
    )
    return key, f.get("sha256", "")


def inactive_reason(key: registry_pb2.ApiKey, now: float | None = None) -> str:
    """"revoked", "expired" or "" (the key is usable)."""
    if key.revoked_at:
        return "revoked"
    if key.expires_at and (now or time.time()) >= key.expires_at:
        return "expired"
    return ""


async def read_key(redis: aioredis.Redis, keys: RedisKeys, key_id: str) -> tuple[registry_pb2.ApiKey, str] | None:
    raw = await redis.hgetall(keys.api_key(key_id))
    return from_fields(raw) if raw else None


async def list_keys(redis: aioredis.Redis, keys: RedisKeys) -> list[registry_pb2.ApiKey]:
    out = []
    for key_id in await redis.zrange(keys.api_keys, 0, -1):
        found = await read_key(redis, keys, key_id.decode())
        if found:
            out.append(found[0])
    return out

"""Who is calling: API keys checked on every call when LLMSERVE_AUTH=required.

The router and the registry each hold one Authenticator. It turns an `Authorization: Bearer <key>`
value (REST header or gRPC metadata) into a Principal, or refuses it with UNAUTHENTICATED; a
Principal whose role is too small for the call is refused with PERMISSION_DENIED.

Key records are cached for CACHE_TTL_S. A revocation is announced by the registry (a RegistryChange
of kind KEY_REVOKE on llm.events.registry); every Authenticator that hears it forgets the key at
once, so a revoked key is refused everywhere within the announcement's delivery time (milliseconds)
instead of at the next poll. The cache is also dropped after a NATS reconnect (an announcement may
have been missed), and an entry lives CACHE_TTL_S at most even if every announcement was lost.

Failed attempts are logged with the reason and the key's public id when the value has one, never
with the value itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from nats.aio.client import Client as NATS

from llmserve.common import api_keys
from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.common.subjects import Subjects
from llmserve.v1 import common_pb2, events_pb2, registry_pb2

log = structlog.get_logger()

CACHE_TTL_S = 30.0
# How long an id that names no key is remembered, so a flood of made-up keys costs one Redis read
# per id and interval instead of one per request.
UNKNOWN_TTL_S = 2.0
INFERENCE = registry_pb2.KEY_ROLE_INFERENCE
ADMIN = registry_pb2.KEY_ROLE_ADMIN


@dataclass(frozen=True)
class Principal:
    """The caller, as its API key describes it."""

    key_id: str
    name: str
    tenant: str
    role: int
    max_priority: int
    requests_per_minute: int
    tokens_per_minute: int

    @classmethod
    def of(cls, key: registry_pb2.ApiKey) -> Principal:
        return cls(
            key.id, key.name or key.id, key.tenant, key.role, key.max_priority or common_pb2.PRIORITY_CRITICAL,
            key.requests_per_minute, key.tokens_per_minute,
        )

    def may(self, role: int) -> bool:
        return self.role == ADMIN or self.role == role


def bearer_secret(value: str | None) -> str:
    """The key in an Authorization value, or UNAUTHENTICATED saying what is wrong (never echoing it)."""
    if not value:
        raise ServiceError.unauthenticated("an API key is required: send 'Authorization: Bearer <key>'")
    if len(value) > api_keys.MAX_HEADER_LENGTH:
        raise ServiceError.unauthenticated("the Authorization value is too long to hold an API key")
    scheme, _, secret = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ServiceError.unauthenticated("the Authorization value must be 'Bearer <key>'")
    return secret.strip()


def required_role_error(principal: Principal, role: int) -> ServiceError:
    return ServiceError.denied(
        f"key {principal.key_id} ({api_keys.role_name(principal.role)}) may not do this: it needs an {api_keys.role_name(role)} key"
    )


class Authenticator:
    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, required: bool, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.required = required
        # Called with the reason of every refusal (for a metric).
        self._on_refused = on_refused or (lambda _reason: None)
        # key id -> (record or None for "no such key", sha256, read at)
        self._cache: dict[str, tuple[registry_pb2.ApiKey | None, str, float]] = {}

    async def authenticate(self, authorization: str | None, role: int, peer: str = "") -> Principal | None:
        """The caller allowed `role`; None when auth is off. Raises UNAUTHENTICATED or PERMISSION_DENIED."""
        if not self.required:
            return None
        try:
            principal = await self._principal(authorization)
        except ServiceError as exc:
            log.warning("auth_failed", reason=exc.message, peer=peer, key_id=_public_id(authorization))
            self._on_refused(exc.reason)
            raise
        if not principal.may(role):
            log.warning("auth_denied", key_id=principal.key_id, key_name=principal.name, peer=peer)
            self._on_refused("permission_denied")
            raise required_role_error(principal, role)
        return principal

    async def _principal(self, authorization: str | None) -> Principal:
        secret = bearer_secret(authorization)
        key_id = api_keys.key_id_of(secret)
        if key_id is None:
            raise ServiceError.unauthenticated("invalid API key")
        key, sha256 = await self._record(key_id)
        # The hash is compared even for an unknown id, so both answers take the same time.
        if not api_keys.matches(secret, sha256 or "0" * 64) or key is None:
            raise ServiceError.unauthenticated("invalid API key")
        why = api_keys.inactive_reason(key)
        if why:
            raise ServiceError.unauthenticated(f"API key {key_id} is {why}", reason=f"key_{why}")
        return Principal.of(key)

    async def _record(self, key_id: str) -> tuple[registry_pb2.ApiKey | None, str]:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None:
            key, sha256, read_at = cached
            if now - read_at < (CACHE_TTL_S if key is not None else UNKNOWN_TTL_S):
                return key, sha256
        found = await api_keys.read_key(self._redis, self._keys, key_id)
        key, sha256 = found if found else (None, "")
        if len(self._cache) > 100_000:
            self._cache.clear()  # bounded: made-up ids must not grow it forever
        self._cache[key_id] = (key, sha256, now)
        return key, sha256

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)

    def forget_all(self) -> None:
        self._cache.clear()

    async def follow_revocations(self, nc: NATS, subjects: Subjects) -> None:
        """Forgets a key as soon as the registry announces a change to it."""

        async def _on_change(msg) -> None:
            change = events_pb2.RegistryChange.FromString(msg.data)
            if change.kind in (events_pb2.REGISTRY_ACTION_KEY_REVOKE, events_pb2.REGISTRY_ACTION_KEY_CREATE) and change.subject:
                self.forget(change.subject)
                log.info("api_key_change_heard", key_id=change.subject, action=change.action)
            elif change.kind == events_pb2.REGISTRY_ACTION_REINIT:
                self.forget_all()

        await nc.subscribe(subjects.registry_changes, cb=_on_change)


def _public_id(authorization: str | None) -> str:
    """The key id of a well-formed value, for logs; "" otherwise (the value itself is never logged)."""
    try:
        return api_keys.key_id_of(bearer_secret(authorization)) or ""
    except ServiceError:
        return ""

"""Model versions and aliases in Redis: the registry's records, read by every service.

Writes are atomic Lua scripts, so concurrent publishers never hand out one version number twice
and an alias never names a version that is not recorded.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.common.redisio import LastKnown
from llmserve.common.subjects import MODEL_NAME_RE
from llmserve.v1 import events_pb2, registry_pb2

STABLE = "stable"
CANARY = "canary"

# Lua scripts answer a refused change with an error whose first word names the status.
_ERROR_CODES = {
    "NOT_FOUND": events_pb2.ERROR_CODE_NOT_FOUND,
    "INVALID": events_pb2.ERROR_CODE_INVALID_ARGUMENT,
    "PRECONDITION": events_pb2.ERROR_CODE_FAILED_PRECONDITION,
}

# Lua: refuses a version that is not recorded or is retired (KEYS[1] its hash; ARGV[1] name, ARGV[2] version).
_SERVABLE = """
local function refuse_unservable()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return 'NOT_FOUND model ' .. ARGV[1] .. ' has no version ' .. ARGV[2]
  end
  if redis.call('HGET', KEYS[1], 'retired') == '1' then
    return 'PRECONDITION version ' .. ARGV[2] .. ' of ' .. ARGV[1] .. ' is retired'
  end
  return nil
end
"""

# KEYS: version hash, aliases, weights, stable history, audit
# ARGV: name, version, actor, at
_PROMOTE = _SERVABLE + """
local refused = refuse_unservable()
if refused then
  return redis.error_reply(refused)
end
local old = redis.call('HGET', KEYS[2], 'stable')
if old and old ~= ARGV[2] then
  redis.call('LPUSH', KEYS[4], old)
  redis.call('LTRIM', KEYS[4], 0, 99)
end
redis.call('HSET', KEYS[2], 'stable', ARGV[2])
if redis.call('HGET', KEYS[2], 'canary') == ARGV[2] then
  redis.call('HDEL', KEYS[2], 'canary')
  redis.call('HDEL', KEYS[3], 'canary')
end
return redis.call('XADD', KEYS[5], '*', 'action', 'promote', 'model', ARGV[1], 'alias', 'stable', 'version', ARGV[2],
                  'previous', old or '', 'actor', ARGV[3], 'at', ARGV[4])
"""

# KEYS: aliases, stable history, audit
# ARGV: name, actor, at, version hash key prefix
_ROLLBACK = """
local current = redis.call('HGET', KEYS[1], 'stable')
while true do
  local previous = redis.call('LPOP', KEYS[2])
  if not previous then
    return redis.error_reply('PRECONDITION model ' .. ARGV[1] .. ' has no earlier stable version to roll back to')
  end
  local vkey = ARGV[4] .. previous
  if previous ~= current and redis.call('EXISTS', vkey) == 1 and redis.call('HGET', vkey, 'retired') ~= '1' then
    redis.call('HSET', KEYS[1], 'stable', previous)
    if redis.call('HGET', KEYS[1], 'canary') == previous then
      redis.call('HDEL', KEYS[1], 'canary')
    end
    return redis.call('XADD', KEYS[3], '*', 'action', 'rollback', 'model', ARGV[1], 'alias', 'stable',
                      'version', previous, 'previous', current or '', 'actor', ARGV[2], 'at', ARGV[3])
  end
end
"""

# KEYS: version hash, aliases, weights, audit
# ARGV: name, version ("0" removes the canary), weight, actor, at
_CANARY = _SERVABLE + """
if ARGV[2] == '0' then
  redis.call('HDEL', KEYS[2], 'canary')
  redis.call('HDEL', KEYS[3], 'canary')
else
  local refused = refuse_unservable()
  if refused then
    return redis.error_reply(refused)
  end
  if redis.call('HGET', KEYS[2], 'stable') == ARGV[2] then
    return redis.error_reply('PRECONDITION version ' .. ARGV[2] .. ' of ' .. ARGV[1] .. ' is already stable')
  end
  redis.call('HSET', KEYS[2], 'canary', ARGV[2])
  redis.call('HSET', KEYS[3], 'canary', ARGV[3])
end
return redis.call('XADD', KEYS[4], '*', 'action', 'canary', 'model', ARGV[1], 'alias', 'canary', 'version', ARGV[2],
                  'weight', ARGV[3], 'actor', ARGV[4], 'at', ARGV[5])
"""

# KEYS: version hash, aliases, weights, audit
# ARGV: name, version, actor, at
_RETIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOT_FOUND model ' .. ARGV[1] .. ' has no version ' .. ARGV[2])
end
if redis.call('HGET', KEYS[2], 'stable') == ARGV[2] then
  return redis.error_reply('PRECONDITION version ' .. ARGV[2] .. ' of ' .. ARGV[1] .. ' is stable; promote another version or roll back first')
end
if redis.call('HGET', KEYS[2], 'canary') == ARGV[2] then
  redis.call('HDEL', KEYS[2], 'canary')
  redis.call('HDEL', KEYS[3], 'canary')
end
redis.call('HSET', KEYS[1], 'retired', '1')
return redis.call('XADD', KEYS[4], '*', 'action', 'retire', 'model', ARGV[1], 'version', ARGV[2],
                  'actor', ARGV[3], 'at', ARGV[4])
"""

# KEYS: models, versions zset, counter, version hash, aliases hash, audit stream, registry id
# ARGV: name, path, sha256, source, created_at, actor, make_stable ("1"/"0"), new registry id
_PUBLISH = """
redis.call('SETNX', KEYS[7], ARGV[8])
-- Never below a number handed out before (ARGV[9]): a Redis that lost its last writes in a failover
-- would otherwise count from an older value.
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[9]) then
  redis.call('SET', KEYS[3], ARGV[9])
end
local version = redis.call('INCR', KEYS[3])
local vkey = KEYS[4] .. version
redis.call('HSET', vkey, 'name', ARGV[1], 'version', version, 'path', ARGV[2], 'sha256', ARGV[3],
           'source', ARGV[4], 'created_at', ARGV[5])
redis.call('ZADD', KEYS[2], version, version)
redis.call('SADD', KEYS[1], ARGV[1])
local promoted = 0
if ARGV[7] == '1' or redis.call('HEXISTS', KEYS[5], 'stable') == 0 then
  redis.call('HSET', KEYS[5], 'stable', version)
  promoted = 1
end
redis.call('XADD', KEYS[6], '*', 'action', 'publish', 'model', ARGV[1], 'version', version,
           'actor', ARGV[6], 'at', ARGV[5], 'stable', promoted)
return version
"""


class ModelCatalog:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._publish = redis.register_script(_PUBLISH)
        self._promote = redis.register_script(_PROMOTE)
        self._rollback = redis.register_script(_ROLLBACK)
        self._canary = redis.register_script(_CANARY)
        self._retire = redis.register_script(_RETIRE)
        # Aliases resolved before stand in while Redis switches primaries (redisio.LastKnown).
        self._last_known = LastKnown("model aliases")

    async def publish(
        self, name: str, path: str, sha256: str, source: str, actor: str = "cli", make_stable: bool = False, after: int = 0
    ) -> registry_pb2.ModelVersion:
        """Records a new version, numbered above `after` (the last number handed out as far as the caller
        knows); it becomes `stable` when asked to or when the model has none yet."""
        if not MODEL_NAME_RE.match(name):
            raise ServiceError.invalid(f"model name {name!r} must be 1-64 letters, digits, '-' or '_'")
        now = time.time()
        version = await self._publish(
            keys=[
                self._keys.models,
                self._keys.versions(name),
                self._keys.version_counter(name),
                # The version hash key is built in the script (it needs the new number): pass its prefix.
                self._keys.version_prefix(name),
                self._keys.aliases(name),
                self._keys.audit,
                self._keys.registry_id,
            ],
            args=[name, path, sha256, source, f"{now:.6f}", actor, "1" if make_stable else "0", uuid.uuid4().hex, str(after)],
        )
        return await self.get(name, int(version))

    async def get(self, name: str, version: int) -> registry_pb2.ModelVersion:
        fields = await self._redis.hgetall(self._keys.version(name, version))
        if not fields:
            raise ServiceError.not_found(f"model {name!r} has no version {version}")
        aliases = await self._redis.hgetall(self._keys.aliases(name))
        record = _to_proto(fields, [a.decode() for a, v in aliases.items() if int(v) == version])
        if CANARY in record.aliases:
            record.canary_weight = int(await self._redis.hget(self._keys.weights(name), CANARY) or 0)
        return record

    async def resolve(self, name: str, alias: str = STABLE, route_key: str = "") -> int:
        """The version an alias names; NOT_FOUND when the model or the alias is unknown.

        With a route_key (the request id), `stable` sends the canary's weight in percent of keys to
        the canary: a key always lands on the same side, so a resubmitted request picks the same version.
        """
        alias = alias or STABLE
        if alias == STABLE and route_key:

            async def stable_and_canary() -> tuple:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(self._keys.aliases(name), [STABLE, CANARY])
                    pipe.hget(self._keys.weights(name), CANARY)
                    (stable, canary), weight = await pipe.execute()
                return stable, canary, weight

            stable, canary, weight = await self._last_known.read((name, "routes"), stable_and_canary)
            if canary is not None and weight is not None and traffic_bucket(route_key) < int(weight):
                return int(canary)
            value = stable
        else:
            value = await self._last_known.read((name, alias), lambda: self._redis.hget(self._keys.aliases(name), alias))
        if value is None:
            if not await self._redis.sismember(self._keys.models, name):
                raise ServiceError.not_found(f"model {name!r} is not published")
            raise ServiceError.not_found(f"model {name!r} has no alias {alias!r}")
        return int(value)

    async def get_by_alias(self, name: str, alias: str = STABLE) -> registry_pb2.ModelVersion:
        return await self.get(name, await self.resolve(name, alias))

    async def promote(self, name: str, version: int, actor: str = "cli") -> str:
        """Makes `version` the stable one (the previous stable is remembered for rollback); returns the audit id."""
        return await self._change(
            self._promote,
            [self._keys.version(name, version), self._keys.aliases(name), self._keys.weights(name), self._keys.stable_history(name), self._keys.audit],
            [name, version, actor, f"{time.time():.6f}"],
        )

    async def rollback(self, name: str, actor: str = "cli") -> str:
        """Makes the previous stable version (skipping retired ones) stable again; returns the audit id."""
        return await self._change(
            self._rollback,
            [self._keys.aliases(name), self._keys.stable_history(name), self._keys.audit],
            [name, actor, f"{time.time():.6f}", self._keys.version_prefix(name)],
        )

    async def set_canary(self, name: str, version: int, weight: int, actor: str = "cli") -> str:
        """Sends `weight` percent of the stable traffic to `version`; version 0 removes the canary."""
        if not 0 <= weight <= 100:
            raise ServiceError.invalid(f"canary weight must be between 0 and 100, got {weight}", param="weight")
        return await self._change(
            self._canary,
            [self._keys.version(name, version), self._keys.aliases(name), self._keys.weights(name), self._keys.audit],
            [name, version, weight, actor, f"{time.time():.6f}"],
        )

    async def retire(self, name: str, version: int, actor: str = "cli") -> str:
        """Marks a version as no longer servable (it cannot be stable; a canary on it is removed)."""
        return await self._change(
            self._retire,
            [self._keys.version(name, version), self._keys.aliases(name), self._keys.weights(name), self._keys.audit],
            [name, version, actor, f"{time.time():.6f}"],
        )

    async def _change(self, script, keys: list[str], args: list) -> str:
        name = args[0]
        if not MODEL_NAME_RE.match(name) or not await self._redis.sismember(self._keys.models, name):
            raise ServiceError.not_found(f"model {name!r} is not published")
        try:
            audit_id = await script(keys=keys, args=args)
        except ResponseError as exc:
            word, _, message = str(exc).partition(" ")
            if word not in _ERROR_CODES:
                raise
            raise ServiceError(_ERROR_CODES[word], message) from None
        return audit_id.decode() if isinstance(audit_id, bytes) else str(audit_id)

    async def canary(self, name: str) -> tuple[int, int] | None:
        """The canary's version and weight, if the model has one."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._keys.aliases(name), CANARY)
            pipe.hget(self._keys.weights(name), CANARY)
            version, weight = await pipe.execute()
        return (int(version), int(weight or 0)) if version is not None else None

    async def set_fallback(self, name: str, fallback: str | None, actor: str = "cli") -> None:
        """Names the model served instead of `name` while no worker serves `name` (None removes it)."""
        if fallback is not None:
            if fallback == name:
                raise ServiceError.invalid("a model cannot be its own fallback", param="fallback")
            if not await self._redis.sismember(self._keys.models, fallback):
                raise ServiceError.not_found(f"fallback model {fallback!r} is not published")
        if not await self._redis.sismember(self._keys.models, name):
            raise ServiceError.not_found(f"model {name!r} is not published")
        async with self._redis.pipeline(transaction=True) as pipe:
            if fallback is None:
                pipe.delete(self._keys.fallback(name))
            else:
                pipe.set(self._keys.fallback(name), fallback)
            pipe.xadd(self._keys.audit, {"action": "fallback", "model": name, "fallback": fallback or "", "actor": actor, "at": f"{time.time():.6f}"})
            await pipe.execute()

    async def fallback(self, name: str) -> str | None:
        value = await self._redis.get(self._keys.fallback(name))
        return value.decode() if value else None

    async def registry_id(self) -> str | None:
        value = await self._redis.get(self._keys.registry_id)
        return value.decode() if value else None

    async def create_registry_id(self, registry_id: str | None = None) -> str:
        """Names this registry (kept if it has a name already); returns the name it has."""
        await self._redis.set(self._keys.registry_id, registry_id or uuid.uuid4().hex, nx=True)
        return await self.registry_id() or ""

    async def audit(self, name: str = "", limit: int = 100) -> list[registry_pb2.AuditEntry]:
        """The latest changes, oldest first (of one model when `name` is given)."""
        entries: list[registry_pb2.AuditEntry] = []
        cursor = "+"
        while len(entries) < limit:
            batch = await self._redis.xrevrange(self._keys.audit, max=cursor, count=max(limit, 100))
            if not batch:
                break
            for entry_id, fields in batch:
                entry = audit_entry(entry_id, fields)
                if not name or entry.model == name:
                    entries.append(entry)
            cursor = "(" + batch[-1][0].decode()
        return list(reversed(entries[:limit]))

    async def audit_entry(self, entry_id: str) -> registry_pb2.AuditEntry:
        found = await self._redis.xrange(self._keys.audit, min=entry_id, max=entry_id, count=1)
        if not found:
            raise ServiceError.not_found(f"no audit entry {entry_id}")
        return audit_entry(*found[0])

    async def model_names(self) -> list[str]:
        return sorted(n.decode() for n in await self._redis.smembers(self._keys.models))

    async def versions(self, name: str) -> list[int]:
        return [int(v) for v in await self._redis.zrange(self._keys.versions(name), 0, -1)]

    async def list_versions(self, name: str = "") -> list[registry_pb2.ModelVersion]:
        names = [name] if name else await self.model_names()
        out = []
        for model in names:
            for version in await self.versions(model):
                out.append(await self.get(model, version))
        return out

    async def find(self, name: str, sha256: str) -> registry_pb2.ModelVersion | None:
        """An existing version of `name` with this exact artifact, if any (publishing is idempotent)."""
        for version in reversed(await self.versions(name)):
            record = await self.get(name, version)
            if record.sha256 == sha256:
                return record
        return None


class CatalogBackup:
    """Export and import of every record, for backups and for recovering a Redis that lost its data."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, catalog: ModelCatalog) -> None:
        self._redis = redis
        self._keys = keys
        self._catalog = catalog

    async def export(self) -> registry_pb2.RegistrySnapshot:
        snapshot = registry_pb2.RegistrySnapshot(registry_id=await self._catalog.registry_id() or "", exported_at=time.time())
        for name in await self._catalog.model_names():
            stable = await self._redis.hget(self._keys.aliases(name), STABLE)
            canary, weight = await self._catalog.canary(name) or (0, 0)
            records = snapshot.models.add(
                name=name,
                last_version=int(await self._redis.get(self._keys.version_counter(name)) or 0),
                stable=int(stable or 0),
                canary=canary,
                canary_weight=weight,
                stable_history=[int(v) for v in await self._redis.lrange(self._keys.stable_history(name), 0, -1)],
                fallback=await self._catalog.fallback(name) or "",
            )
            for version in await self._catalog.versions(name):
                records.versions.append(await self._catalog.get(name, version))
        return snapshot

    async def import_(self, snapshot: registry_pb2.RegistrySnapshot, actor: str = "cli", min_counters: dict[str, int] | None = None) -> tuple[int, int]:
        """Restores every model of the snapshot; refuses (changing nothing) if one of them exists already.

        Version counters are raised to at least `min_counters` (what the model store last saw), so a
        backup older than the last publish cannot make a version number come back.
        """
        existing = set(await self._catalog.model_names())
        clash = sorted(existing & {m.name for m in snapshot.models})
        if clash:
            raise ServiceError(events_pb2.ERROR_CODE_FAILED_PRECONDITION, f"the registry already holds {', '.join(clash)}; nothing imported")
        now = f"{time.time():.6f}"
        versions = 0
        async with self._redis.pipeline(transaction=True) as pipe:
            if snapshot.registry_id:
                pipe.set(self._keys.registry_id, snapshot.registry_id, nx=True)
            for model in snapshot.models:
                if not MODEL_NAME_RE.match(model.name):
                    raise ServiceError.invalid(f"model name {model.name!r} in the backup is not valid")
                counter = max([model.last_version, (min_counters or {}).get(model.name, 0)] + [v.version for v in model.versions])
                pipe.sadd(self._keys.models, model.name)
                pipe.set(self._keys.version_counter(model.name), counter)
                for v in model.versions:
                    fields = {"name": model.name, "version": v.version, "path": v.path, "sha256": v.sha256,
                              "source": v.source, "created_at": f"{v.created_at:.6f}"}
                    if v.retired:
                        fields["retired"] = "1"
                    pipe.hset(self._keys.version(model.name, v.version), mapping=fields)
                    pipe.zadd(self._keys.versions(model.name), {str(v.version): v.version})
                    versions += 1
                if model.stable:
                    pipe.hset(self._keys.aliases(model.name), STABLE, model.stable)
                if model.canary:
                    pipe.hset(self._keys.aliases(model.name), CANARY, model.canary)
                    pipe.hset(self._keys.weights(model.name), CANARY, model.canary_weight)
                if model.stable_history:
                    pipe.rpush(self._keys.stable_history(model.name), *model.stable_history)
                if model.fallback:
                    pipe.set(self._keys.fallback(model.name), model.fallback)
                pipe.xadd(self._keys.audit, {"action": "import", "model": model.name, "version": model.stable,
                                             "actor": actor, "at": now})
            await pipe.execute()
        return len(snapshot.models), versions


def audit_entry(entry_id: bytes | str, fields: dict) -> registry_pb2.AuditEntry:
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
    return registry_pb2.AuditEntry(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        action=f.get("action", ""),
        model=f.get("model", ""),
        version=int(f.get("version") or 0),
        previous=int(f.get("previous") or 0),
        weight=int(f.get("weight") or 0),
        actor=f.get("actor", ""),
        at=float(f.get("at") or 0),
        subject=f.get("subject", ""),
    )


def _to_proto(fields: dict[bytes, bytes], aliases: list[str]) -> registry_pb2.ModelVersion:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    return registry_pb2.ModelVersion(
        name=f["name"],
        version=int(f["version"]),
        path=f["path"],
        sha256=f["sha256"],
        source=f.get("source", ""),
        created_at=float(f.get("created_at", 0)),
        aliases=sorted(aliases),
        retired=f.get("retired") == "1",
    )


def traffic_bucket(route_key: str) -> int:
    """0-99, uniform over keys and the same for one key everywhere (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(route_key.encode()).digest()[:8], "big") % 100

"""Model versions and aliases in Redis: the registry's records, read by every service.

Writes are atomic Lua scripts, so concurrent publishers never hand out one version number twice
and an alias never names a version that is not recorded.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.common.subjects import MODEL_NAME_RE
from llmserve.v1 import registry_pb2

STABLE = "stable"

# KEYS: models, versions zset, counter, version hash, aliases hash, audit stream
# ARGV: name, path, sha256, source, created_at, actor, make_stable ("1"/"0")
_PUBLISH = """
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

    async def publish(
        self, name: str, path: str, sha256: str, source: str, actor: str = "cli", make_stable: bool = False
    ) -> registry_pb2.ModelVersion:
        """Records a new version; it becomes `stable` when asked to or when the model has none yet."""
        if not MODEL_NAME_RE.match(name):
            raise ServiceError.invalid(f"model name {name!r} must be 1-64 letters, digits, '-' or '_'")
        now = time.time()
        # The version hash key is built in the script (it needs the new number): pass its prefix.
        version_prefix = self._keys.version(name, 0)[:-1]
        version = await self._publish(
            keys=[
                self._keys.models,
                self._keys.versions(name),
                self._keys.version_counter(name),
                version_prefix,
                self._keys.aliases(name),
                self._keys.audit,
            ],
            args=[name, path, sha256, source, f"{now:.6f}", actor, "1" if make_stable else "0"],
        )
        return await self.get(name, int(version))

    async def get(self, name: str, version: int) -> registry_pb2.ModelVersion:
        fields = await self._redis.hgetall(self._keys.version(name, version))
        if not fields:
            raise ServiceError.not_found(f"model {name!r} has no version {version}")
        aliases = await self._redis.hgetall(self._keys.aliases(name))
        return _to_proto(fields, [a.decode() for a, v in aliases.items() if int(v) == version])

    async def resolve(self, name: str, alias: str = STABLE) -> int:
        """The version an alias names; NOT_FOUND when the model or the alias is unknown."""
        value = await self._redis.hget(self._keys.aliases(name), alias or STABLE)
        if value is None:
            if not await self._redis.sismember(self._keys.models, name):
                raise ServiceError.not_found(f"model {name!r} is not published")
            raise ServiceError.not_found(f"model {name!r} has no alias {alias!r}")
        return int(value)

    async def get_by_alias(self, name: str, alias: str = STABLE) -> registry_pb2.ModelVersion:
        return await self.get(name, await self.resolve(name, alias))

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
    )

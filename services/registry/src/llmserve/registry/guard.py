"""Noticing that Redis lost the registry, so version numbers are never handed out twice.

Redis names the registry it holds (`llm:registry:id`). The model store keeps, per Redis address and
key prefix, a small record of that name and of the last version number published for each model
(`<store>/.registry/<digest>.json`). If Redis answers without a registry name while the store says
this Redis held one, Redis restarted without its data: the registry reports itself not ready and
refuses to publish, instead of starting again at version 1. Two ways back:

- `llmserve models import FILE` restores a backup (`llmserve models export`); version counters are
  raised to what the store last saw, so even an old backup cannot bring a number back;
- `llmserve models reinit` starts an empty registry whose counters continue from the store's record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import structlog

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import redacted_url
from llmserve.common.errors import ServiceError
from llmserve.v1 import events_pb2

log = structlog.get_logger()


class RegistryLost(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(events_pb2.ERROR_CODE_FAILED_PRECONDITION, message, reason="registry_lost")


class RegistryGuard:
    def __init__(self, catalog: ModelCatalog, store: Path, redis_url: str, key_prefix: str) -> None:
        self._catalog = catalog
        self._store = Path(store)
        digest = hashlib.sha256(f"{redacted_url(redis_url)}|{key_prefix}".encode()).hexdigest()[:16]
        self.record_path = self._store / ".registry" / f"{digest}.json"
        self._origin = {"redis": redacted_url(redis_url), "prefix": key_prefix}

    def _read(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return {}

    def _write(self, record: dict) -> None:
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self._origin, **record}, indent=1, sort_keys=True))
        tmp.replace(self.record_path)

    def last_versions(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._read().get("last_versions", {}).items()}

    async def check(self) -> str:
        """Returns the registry's name; raises RegistryLost when Redis lost the records the store knows of."""
        record = self._read()
        current = await self._catalog.registry_id()
        if current is None:
            if record.get("registry_id"):
                raise RegistryLost(
                    f"Redis holds no registry, but the model store remembers registry {record['registry_id']} at this "
                    "address: Redis restarted without its data. Restore a backup with `llmserve models import FILE`, "
                    "or start an empty registry with `llmserve models reinit` (version numbers continue)."
                )
            current = await self._catalog.create_registry_id()
        if record.get("registry_id") != current:
            if record.get("registry_id"):
                log.warning("registry_changed", was=record["registry_id"], now=current)
            self._write({**record, "registry_id": current})
        return current

    def note_version(self, name: str, version: int) -> None:
        """Remembers the highest version number published for a model (called after each publish)."""
        record = self._read()
        versions = record.setdefault("last_versions", {})
        if versions.get(name, 0) < version:
            versions[name] = version
            self._write(record)

    async def reinit(self, redis, keys) -> str:
        """Starts an empty registry in Redis whose version counters continue from the store's record."""
        if await self._catalog.registry_id() is not None:
            raise ServiceError(events_pb2.ERROR_CODE_FAILED_PRECONDITION, "Redis holds a registry already; nothing to do")
        async with redis.pipeline(transaction=True) as pipe:
            for name, version in self.last_versions().items():
                pipe.set(keys.version_counter(name), version)
            await pipe.execute()
        registry_id = await self._catalog.create_registry_id()
        self._write({**self._read(), "registry_id": registry_id})
        return registry_id

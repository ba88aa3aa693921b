"""Announces every registry change on NATS, whoever made it (gRPC, REST admin routes, the CLI).

The audit stream is the single record of changes, so the registry tails it and publishes each new
entry as a RegistryChange. Announcements are hints: workers re-read their alias when one arrives and
also every few seconds, so an announcement lost while NATS or the registry is down delays a swap
by seconds but never loses it. Several registries may announce the same entry; reading it twice is harmless.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog
from nats.aio.client import Client as NATS

from llmserve.common.catalog import audit_entry
from llmserve.common.keys import RedisKeys
from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2

log = structlog.get_logger()


class ChangeAnnouncer:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, nc: NATS, subjects: Subjects) -> None:
        self._redis = redis
        self._keys = keys
        self._nc = nc
        self._subjects = subjects
        self.announced = 0
        # Set once the announcer knows where the stream stands: changes from then on are announced.
        self.positioned = asyncio.Event()

    async def run(self, block_ms: int = 1000) -> None:
        last = None
        while True:
            try:
                if last is None:
                    # Start after the newest entry: what happened before this registry started is settled.
                    newest = await self._redis.xrevrange(self._keys.audit, count=1)
                    last = newest[0][0].decode() if newest else "0-0"
                    self.positioned.set()
                batch = await self._redis.xread({self._keys.audit: last}, block=block_ms, count=100)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away for a moment
                log.warning("audit_tail_failed", error=str(exc))
                last = None
                await asyncio.sleep(1.0)
                continue
            for _stream, entries in batch or ():
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    entry = audit_entry(entry_id, fields)
                    change = events_pb2.RegistryChange(
                        model=entry.model, kind=registry_action(entry.action), action=entry.action, version=entry.version,
                        audit_id=entry.id, subject=entry.subject,
                    )
                    try:
                        await self._nc.publish(self._subjects.registry_changes, change.SerializeToString())
                        self.announced += 1
                        log.info("registry_change_announced", model=entry.model, action=entry.action, version=entry.version, subject=entry.subject)
                    except Exception as exc:
                        log.warning("announce_failed", error=str(exc))


def registry_action(action: str) -> int:
    """The RegistryAction of an audit entry's action text; UNSPECIFIED for one this build does not know."""
    try:
        return events_pb2.RegistryAction.Value(f"REGISTRY_ACTION_{action.upper()}")
    except ValueError:
        return events_pb2.REGISTRY_ACTION_UNSPECIFIED

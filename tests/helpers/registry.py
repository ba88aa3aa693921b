"""Registry records for tests: a catalog over a Redis URL, and registering an artifact under a prefix."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from llmserve.common.catalog import ModelCatalog
from llmserve.common.keys import RedisKeys
from llmserve.v1 import registry_pb2


async def with_catalog(redis_url: str, prefix: str, fn):
    client = aioredis.from_url(redis_url)
    try:
        return await fn(ModelCatalog(client, RedisKeys(prefix)))
    finally:
        await client.aclose()


def register(redis_url: str, prefix: str, record: registry_pb2.ModelVersion, name: str | None = None) -> registry_pb2.ModelVersion:
    """Records an artifact already in the store as a version in the registry under `prefix`."""
    return asyncio.run(
        with_catalog(redis_url, f"{prefix}:", lambda c: c.publish(name or record.name, record.path, record.sha256, "test"))
    )

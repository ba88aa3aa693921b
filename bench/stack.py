"""The whole stack for a benchmark: NATS, Redis and every llmserve service with one worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from llmserve.common.catalog import ModelCatalog
from llmserve.common.keys import RedisKeys
from llmserve.registry.publish import ensure_default_model
from tests.helpers.cluster import Cluster
from tests.helpers.servers import nats_server, redis_server


async def publish_default_model(redis_url: str, prefix: str, store: Path):
    client = aioredis.from_url(redis_url)
    try:
        return await ensure_default_model(ModelCatalog(client, RedisKeys(prefix)), store)
    finally:
        await client.aclose()


def default_model_record(store: Path, work: Path, log):
    """The default model's registry record, converted into the store once (a Redis of its own for the
    registry's bookkeeping, stopped afterwards)."""
    log("publishing the model (converted once, then cached) ...")
    setup_redis = redis_server(work / "r0")
    try:
        return asyncio.run(publish_default_model(setup_redis.url, "bench-setup:", store))
    finally:
        setup_redis.stop()


@contextlib.contextmanager
def running_stack(store: Path, work: Path, **worker_env: str):
    """NATS, Redis and every service with one worker, for the whole run; yields (cluster, worker pid)."""
    nats, redis = nats_server(work), redis_server(work)
    prefix = "bench" + uuid.uuid4().hex[:6]
    asyncio.run(publish_default_model(redis.url, f"{prefix}:", store))
    cluster = Cluster(nats.url, redis.url, prefix, store, work / "logs")
    # The monitor's synthetic probes would generate on the worker at random moments of the run.
    cluster.extra_env["LLMSERVE_MONITOR_PROBE_INTERVAL_S"] = "0"
    try:
        cluster.start(**{"LLMSERVE_WORKER_TORCH_THREADS": "0", "LLMSERVE_WORKER_MAX_RUNNING": "32", **worker_env})
        worker = next(s for s in cluster.services if s.name.startswith("worker"))
        yield cluster, worker.proc.pid
    finally:
        cluster.stop()
        nats.stop()
        redis.stop()

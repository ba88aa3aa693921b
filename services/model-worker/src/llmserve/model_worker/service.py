"""Wiring of one model worker process: NATS, Redis, the model, the engine, shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog
import torch

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.keys import RedisKeys
from llmserve.common.lifecycle import new_instance_id, shutdown_event
from llmserve.common.modelstore import ChecksumMismatch
from llmserve.common.natsio import connect_nats
from llmserve.common.subjects import Subjects
from llmserve.model_worker.loader import load_model
from llmserve.model_worker.serial_engine import SerialEngine
from llmserve.model_worker.settings import WorkerSettings
from llmserve.model_worker.worker import ModelWorker
from llmserve.v1 import registry_pb2

log = structlog.get_logger()


async def wait_for_version(catalog: ModelCatalog, settings: WorkerSettings, stop: asyncio.Event) -> registry_pb2.ModelVersion | None:
    """The version to serve; waits (logging why) while the model is not published yet."""
    while not stop.is_set():
        try:
            if settings.model_version:
                return await catalog.get(settings.model, settings.model_version)
            return await catalog.get_by_alias(settings.model, settings.model_alias)
        except ServiceError as exc:
            log.info("model_not_published_yet", model=settings.model, reason=exc.message)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
    return None


async def run(settings: WorkerSettings) -> None:
    stop = shutdown_event()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    common = settings.common
    instance_id = new_instance_id("worker")
    structlog.contextvars.bind_contextvars(instance=instance_id)
    subjects = Subjects(common.subject_prefix)
    async with contextlib.AsyncExitStack() as stack:
        redis = aioredis.from_url(common.redis_url)
        stack.push_async_callback(redis.aclose)
        catalog = ModelCatalog(redis, RedisKeys(common.key_prefix))
        record = await wait_for_version(catalog, settings, stop)
        if record is None:
            return
        path = common.model_store / record.path
        try:
            loaded = await asyncio.to_thread(load_model, path, record.sha256, settings.device, settings.dtype)
        except ChecksumMismatch as exc:
            log.error("model_checksum_mismatch", model=record.name, version=record.version, error=str(exc))
            raise SystemExit(2) from exc
        engine = SerialEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device)
        await engine.start()
        stack.push_async_callback(engine.stop)
        nc = await connect_nats(common.nats_url, name=instance_id)
        stack.push_async_callback(nc.drain)
        worker = ModelWorker(nc, subjects, engine, loaded, record, instance_id, common.heartbeat_interval_s)
        await worker.start()
        await stop.wait()
        log.info("worker_stopping")
        await worker.drain()

"""Wiring of one model worker process: NATS, Redis, the model, the engine, shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import torch

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.metrics_server import serve_metrics
from llmserve.common.modelstore import ChecksumMismatch
from llmserve.common.runtime import service_runtime
from llmserve.model_worker.batching_engine import BatchingEngine
from llmserve.model_worker.engine import Engine
from llmserve.model_worker.loader import CPU_LINEARS, LoadedModel, load_model
from llmserve.model_worker.serial_engine import SerialEngine
from llmserve.model_worker.settings import WorkerSettings
from llmserve.model_worker.version_server import VersionServer
from llmserve.model_worker.worker import ModelWorker
from llmserve.v1 import events_pb2, registry_pb2

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


def build_engine(settings: WorkerSettings, loaded: LoadedModel) -> Engine:
    if settings.engine == "serial":
        return SerialEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device)
    if settings.engine != "batching":
        raise SystemExit(f"LLMSERVE_WORKER_ENGINE must be 'batching' or 'serial', got {settings.engine!r}")
    return BatchingEngine(
        loaded.model,
        loaded.tokenizer,
        loaded.eos_ids,
        loaded.device,
        max_running=settings.max_running,
        max_kv_tokens=min(settings.max_kv_tokens, loaded.max_context * settings.max_running),
        prefill_chunk=settings.prefill_chunk,
    )


async def run(settings: WorkerSettings) -> None:
    if settings.cpu_linear not in CPU_LINEARS:
        raise SystemExit(f"LLMSERVE_WORKER_CPU_LINEAR must be one of {', '.join(CPU_LINEARS)}, got {settings.cpu_linear!r}")
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    common = settings.common
    async with service_runtime(common, events_pb2.INSTANCE_KIND_WORKER) as rt:
        catalog = rt.catalog(rt.connect_redis())
        record = await wait_for_version(catalog, settings, rt.stop)
        if record is None:
            return
        nc = await rt.connect_nats()

        async def open_version(record: registry_pb2.ModelVersion) -> VersionServer:
            path = common.model_store / record.path
            loaded = await asyncio.to_thread(load_model, path, record.sha256, settings.device, settings.dtype, settings.cpu_linear)
            engine = build_engine(settings, loaded)
            await engine.start()
            return VersionServer(nc, rt.subjects, engine, loaded, record, rt.instance_id, settings.priority_aging_s)

        try:
            first = await open_version(record)
        except ChecksumMismatch as exc:
            log.error("model_checksum_mismatch", model=record.name, version=record.version, error=str(exc))
            raise SystemExit(2) from exc
        worker = ModelWorker(
            nc,
            rt.subjects,
            first,
            rt.instance_id,
            common.heartbeat_interval_s,
            catalog=catalog,
            open_version=open_version,
            # A worker started on an explicit version stays on it; otherwise it follows its alias.
            alias="" if settings.model_version else settings.model_alias,
            retire_grace_s=settings.drain_grace_s,
        )
        await worker.start()
        serve_metrics(settings.metrics_addr)
        await rt.stop.wait()
        log.info("worker_stopping")
        await worker.drain(settings.drain_grace_s)

"""Wiring of one model worker process: NATS, Redis, the model, the engine, shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import torch
from redis.exceptions import RedisError

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.modelstore import ChecksumMismatch
from llmserve.common.runtime import ServiceRuntime
from llmserve.common.startup import ShutdownRequested
from llmserve.model_worker.attach_book import AttachBook
from llmserve.model_worker.batching_engine import BatchingEngine
from llmserve.model_worker.engine import Engine
from llmserve.model_worker.flat_batching_engine import FlatBatchingEngine
from llmserve.model_worker.loader import CPU_LINEARS, MODEL_IMPLS, NUMERICS, LoadedModel, load_model
from llmserve.model_worker.own_thread import in_own_thread
from llmserve.model_worker.serial_engine import SerialEngine
from llmserve.model_worker.settings import WorkerSettings
from llmserve.model_worker.version_server import VersionServer
from llmserve.model_worker.worker import ModelWorker
from llmserve.v1 import registry_pb2

log = structlog.get_logger()


async def wait_for_version(catalog: ModelCatalog, settings: WorkerSettings, stop: asyncio.Event) -> registry_pb2.ModelVersion:
    """The version to serve; waits (logging why, once per reason) while the model is not published
    yet or Redis is away. Raises ShutdownRequested when the stop signal comes first."""
    said = ""
    while not stop.is_set():
        try:
            if settings.model_version:
                return await catalog.get(settings.model, settings.model_version)
            return await catalog.get_by_alias(settings.model, settings.model_alias)
        except ServiceError as exc:
            reason = exc.message
        except RedisError as exc:
            reason = f"Redis unreachable: {exc}"
        if reason != said:
            said = reason
            log.info("waiting_for_model_version", model=settings.model, reason=reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
    raise ShutdownRequested


def build_engine(settings: WorkerSettings, loaded: LoadedModel) -> Engine:
    if settings.engine == "serial":
        return SerialEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device)
    if settings.engine != "batching":
        raise SystemExit(f"LLMSERVE_WORKER_ENGINE must be 'batching' or 'serial', got {settings.engine!r}")
    limits = {
        "max_running": settings.max_running,
        "max_kv_tokens": min(settings.max_kv_tokens, loaded.max_context * settings.max_running),
        "prefill_chunk": settings.prefill_chunk,
    }
    if loaded.flat:
        cache_bytes = int(settings.prompt_cache_mb * 2**20)
        return FlatBatchingEngine(
            loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, prompt_cache_bytes=cache_bytes,
            prefix_cache_share=settings.prefix_cache_share, max_preemptions=settings.max_preemptions, **limits,
        )
    return BatchingEngine(loaded.model, loaded.tokenizer, loaded.eos_ids, loaded.device, **limits)


async def serve(settings: WorkerSettings, rt: ServiceRuntime) -> None:
    """The worker's life after its imports: Redis, the version to serve, the model, NATS, jobs, drain."""
    if settings.cpu_linear not in CPU_LINEARS:
        raise SystemExit(f"LLMSERVE_WORKER_CPU_LINEAR must be one of {', '.join(CPU_LINEARS)}, got {settings.cpu_linear!r}")
    if settings.numerics not in NUMERICS:
        raise SystemExit(f"LLMSERVE_WORKER_NUMERICS must be one of {', '.join(NUMERICS)}, got {settings.numerics!r}")
    if settings.model_impl not in MODEL_IMPLS:
        raise SystemExit(f"LLMSERVE_WORKER_MODEL_IMPL must be one of {', '.join(MODEL_IMPLS)}, got {settings.model_impl!r}")
    if not 0.0 <= settings.prefix_cache_share <= 1.0:
        raise SystemExit(f"LLMSERVE_WORKER_PREFIX_CACHE_SHARE must be between 0 and 1, got {settings.prefix_cache_share}")
    if settings.preferred_wait_s < 0:
        raise SystemExit(f"LLMSERVE_WORKER_PREFERRED_WAIT_S must be 0 or more, got {settings.preferred_wait_s}")
    if settings.max_preemptions < 0:
        raise SystemExit(f"LLMSERVE_WORKER_MAX_PREEMPTIONS must be 0 or more, got {settings.max_preemptions}")
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    for notice in settings.deprecations:
        log.warning("deprecated_setting", notice=notice)
    common = settings.common
    catalog = rt.catalog(await rt.connect_redis())
    rt.readiness.block("model", "waiting for the registry to name a version")
    record = await wait_for_version(catalog, settings, rt.stop)
    # Jobs are pulled only after NATS is connected; the model loads meanwhile.
    nc = rt.nats
    # One book for every version this worker serves: a request is found whichever version runs it.
    book = AttachBook(settings.attach_retention_s)
    if settings.test_crash_marker:
        log.warning("test_crash_marker_set", notice="a job containing the marker aborts this worker (tests only)")

    async def open_version(record: registry_pb2.ModelVersion) -> VersionServer:
        path = common.model_store / record.path
        # The serial engine drives transformers' model (its generate-style forward).
        impl = "transformers" if settings.engine == "serial" else settings.model_impl
        loaded = await in_own_thread(
            load_model, path, record.sha256, settings.device, settings.dtype, settings.cpu_linear, settings.numerics, impl,
            settings.weight_cache_path(),
        )
        engine = build_engine(settings, loaded)
        await engine.start()
        return VersionServer(nc, rt.subjects, engine, loaded, record, rt.instance_id, settings.priority_aging_s, settings.preferred_wait_s,
                             common.nats_js_replicas, book, settings.test_crash_marker)

    rt.readiness.block("model", f"loading {record.name} version {record.version}")
    try:
        first = await rt.unless_stopped(open_version(record))
    except ChecksumMismatch as exc:
        log.error("model_checksum_mismatch", model=record.name, version=record.version, error=str(exc))
        raise SystemExit(2) from exc
    rt.readiness.clear("model")
    await rt.connect_nats()
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
        wind_down_grace_s=settings.drain_grace_s,
    )
    await worker.start()
    rt.started()
    await rt.stop.wait()
    log.info("worker_stopping")
    await worker.drain(settings.drain_grace_s)

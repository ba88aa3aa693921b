"""Deciding whether and where a submission is queued."""

from __future__ import annotations

import time

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.liveness import LivenessTable
from llmserve.v1 import common_pb2, events_pb2


async def admit(job: events_pb2.Job, catalog: ModelCatalog, liveness: LivenessTable) -> int:
    """Returns the model version the job is queued for, or raises the reason it is not.

    An alias is resolved through the registry; `stable` (the default) sends a share of requests to the
    model's canary when it has one with a weight (the same request id always picks the same side).
    When no worker runs the resolved version yet (a swap in progress, a canary nobody serves), a
    version the model's workers do run serves the request, the stable one first.
    When no worker serves the model and the registry names a fallback model with live workers, the
    job is rewritten to the fallback's stable version (degraded service beats no service). Explicit
    versions and continuations of a migrated request never fall back: they must run on what they asked for.
    """
    if job.deadline and time.time() >= job.deadline:
        raise ServiceError.deadline("deadline passed before the request was queued")
    if job.model_version:
        version = job.model_version
        record = await catalog.get(job.model, version)  # NOT_FOUND for an unknown version
        if record.retired and job.attempt == 0:
            raise ServiceError.not_found(f"version {version} of {job.model} is retired")
    else:
        version = await catalog.resolve(job.model, job.model_alias or "stable", route_key=job.request_id)
    if not liveness.live_workers(job.model, version) and not liveness.settled():
        # This scheduler started a moment ago and may not have heard the workers' beats yet.
        await liveness.wait_settled()
    if liveness.live_workers(job.model, version):
        return version
    if not job.model_version and job.attempt == 0:
        # Workers are moving between versions (a promote or rollback a moment ago), or nobody serves
        # the canary: the version the workers run now answers, stable first.
        live = liveness.live_versions(job.model)
        if live:
            stable = await catalog.resolve(job.model)
            return stable if stable in live else max(live)
        fallback = await catalog.fallback(job.model)
        if fallback:
            fallback_version = await catalog.resolve(fallback)
            if liveness.live_workers(fallback, fallback_version):
                job.model = fallback
                return fallback_version
    raise ServiceError.unavailable(f"no live worker serves {job.model} version {version}")


def effective_priority(requested: int, allowed: int = common_pb2.PRIORITY_CRITICAL) -> int:
    """Unset means normal; anything out of range is clamped into the defined levels and to what the caller may use."""
    if requested == common_pb2.PRIORITY_UNSPECIFIED:
        requested = common_pb2.PRIORITY_NORMAL
    return max(common_pb2.PRIORITY_LOW, min(common_pb2.PRIORITY_CRITICAL, allowed, requested))

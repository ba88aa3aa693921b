"""Deciding whether and where a submission is queued."""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.liveness import LivenessTable
from llmserve.v1 import common_pb2, events_pb2


@dataclass(frozen=True)
class Admission:
    """Where an admitted job goes: the model (the requested one, or its fallback) and the version."""

    model: str
    version: int
    # Why this version: "requested" (explicit version), "alias" (what the alias or canary resolved
    # to), "live" (workers are moving between versions), "fallback" (the registry's fallback model).
    via: str


async def admit(job: events_pb2.Job, catalog: ModelCatalog, liveness: LivenessTable) -> Admission:
    """Where the job is queued, or raises the reason it is not. The job itself is not changed.

    An alias is resolved through the registry; `stable` (the default) sends a share of requests to the
    model's canary when it has one with a weight (the same request id always picks the same side).
    When no worker runs the resolved version yet (a swap in progress, a canary nobody serves), a
    version the model's workers do run serves the request, the stable one first.
    When no worker serves the model and the registry names a fallback model with live workers, the
    job goes to the fallback's stable version (degraded service beats no service). Explicit
    versions and continuations of a migrated request never fall back: they must run on what they asked for.
    """
    if job.deadline and time.time() >= job.deadline:
        raise ServiceError.deadline("deadline passed before the request was queued")
    if job.model_version:
        version, via = job.model_version, "requested"
        record = await catalog.get(job.model, version)  # NOT_FOUND for an unknown version
        if record.retired and job.attempt == 0:
            raise ServiceError.not_found(f"version {version} of {job.model} is retired")
    else:
        version, via = await catalog.resolve(job.model, job.model_alias or "stable", route_key=job.request_id), "alias"
    if not liveness.live_workers(job.model, version) and not liveness.settled():
        # This scheduler started a moment ago and may not have heard the workers' beats yet.
        await liveness.wait_settled()
    if liveness.live_workers(job.model, version):
        return Admission(job.model, version, via)
    if not job.model_version and job.attempt == 0:
        # Workers are moving between versions (a promote or rollback a moment ago), or nobody serves
        # the canary: the version the workers run now answers, stable first.
        live = liveness.live_versions(job.model)
        if live:
            stable = await catalog.resolve(job.model)
            return Admission(job.model, stable if stable in live else max(live), "live")
        fallback = await catalog.fallback(job.model)
        if fallback:
            fallback_version = await catalog.resolve(fallback)
            if liveness.live_workers(fallback, fallback_version):
                return Admission(fallback, fallback_version, "fallback")
    raise ServiceError.unavailable(f"no live worker serves {job.model} version {version}")


def effective_priority(requested: int, allowed: int = common_pb2.PRIORITY_CRITICAL) -> int:
    """Unset means normal; anything out of range is clamped into the defined levels and to what the caller may use."""
    if requested == common_pb2.PRIORITY_UNSPECIFIED:
        requested = common_pb2.PRIORITY_NORMAL
    return max(common_pb2.PRIORITY_LOW, min(common_pb2.PRIORITY_CRITICAL, allowed, requested))

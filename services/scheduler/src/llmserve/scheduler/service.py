"""The scheduler's NATS side: answers submissions and publishes accepted jobs to JetStream.

A submission passes, in order: its deadline, version choice (alias, canary, fallback), a live worker
for that version, its tenant's share (which also caps its priority), and finally the model's bounded
queue. Anything refused is answered at once with the reason; nothing is held in the scheduler, so
several schedulers can run side by side and any of them may crash without losing an accepted job.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import Subjects
from llmserve.common.tracing import Context, Span, SpanKind, end_span, extract, headers_for, start_span
from llmserve.scheduler import metrics
from llmserve.scheduler.admission import admit, effective_priority
from llmserve.scheduler.direct import DirectHandoff
from llmserve.scheduler.dispatch import PrefixDispatch
from llmserve.scheduler.queues import JobQueues
from llmserve.scheduler.tenants import TenantPolicy
from llmserve.v1 import events_pb2

log = structlog.get_logger()


class Scheduler:
    def __init__(
        self, nc: NATS, subjects: Subjects, catalog: ModelCatalog, liveness: LivenessTable, queues: JobQueues, tenants: TenantPolicy,
        cache_aware: bool = True, direct: DirectHandoff | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._catalog = catalog
        self._liveness = liveness
        self.queues = queues
        self._tenants = tenants
        self._subs: list = []
        # None: every job goes to the shared queue (LLMSERVE_SCHEDULER_CACHE_AWARE=0).
        self._dispatch = PrefixDispatch(liveness) if cache_aware else None
        # None: a job waits for the queue while it has no stream leader (direct.py).
        self._direct = direct

    async def start(self) -> None:
        group = Subjects.SCHEDULER_QUEUE_GROUP
        self._subs.append(await self._nc.subscribe(self._subjects.submit, queue=group, cb=self._on_submit))
        self._subs.append(await self._nc.subscribe(self._subjects.done, queue=group, cb=self._on_done))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.drain()

    async def refresh_queue_depth(self) -> None:
        """Samples every model's queue, for heartbeats, metrics and Retry-After estimates."""
        try:
            models = await self._catalog.model_names()
        except Exception:  # Redis unreachable for a moment: keep the last figures
            return
        await self.queues.refresh(models)

    def fill_beat(self, beat: events_pb2.Heartbeat) -> None:
        beat.queued_jobs = self.queues.total_queued
        for model, state in sorted(self.queues.states.items()):
            beat.model_loads.add(model=model, queued_jobs=state.depth, queue_drain_per_s=state.drain_rate or 0.0)

    async def _on_submit(self, msg: Msg) -> None:
        reply = await self.submit(msg.data, extract(msg.headers))
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    async def _on_done(self, msg: Msg) -> None:
        try:
            done = events_pb2.JobDone.FromString(msg.data)
            await self._tenants.release(done.tenant, done.request_id)
            metrics.TENANT_RELEASES.inc()
        except Exception as exc:  # the lease expires on its own
            log.warning("tenant_release_failed", error=str(exc))

    async def submit(self, data: bytes, trace_parent: Context | None = None) -> events_pb2.SubmitReply:
        try:
            job = events_pb2.Job.FromString(data)
        except Exception:
            return _rejected(ServiceError.invalid("submission is not a llmserve.v1.Job"))
        structlog.contextvars.bind_contextvars(request_id=job.request_id, model=job.model)
        span = start_span("scheduler.admit", trace_parent, SpanKind.SERVER, **{
            "llmserve.request_id": job.request_id, "llmserve.model": job.model, "llmserve.attempt": job.attempt,
        })
        error = None
        try:
            outcome = await self._admit_and_queue(job, span)
            span.set_attributes({"llmserve.outcome": outcome, "llmserve.version": job.model_version, "llmserve.priority": job.priority})
        except ServiceError as exc:
            error = exc.message
            log.info("job_rejected", error=exc.message, code=exc.code_name, reason=exc.reason)
            # An unknown model name comes from the client: it must not become a label of its own.
            model = "unknown" if exc.code == events_pb2.ERROR_CODE_NOT_FOUND else job.model
            metrics.SUBMISSIONS.labels(model=model, outcome=exc.code_name).inc()
            metrics.REJECTIONS.labels(model=model, reason=exc.reason).inc()
            return _rejected(exc)
        except Exception as exc:
            error = type(exc).__name__
            log.exception("submit_failed")
            metrics.SUBMISSIONS.labels(model="unknown", outcome="internal").inc()
            metrics.REJECTIONS.labels(model="unknown", reason="internal").inc()
            return _rejected(ServiceError.internal(f"scheduler failed: {type(exc).__name__}"))
        else:
            metrics.SUBMISSIONS.labels(model=job.model, outcome=outcome).inc()
        finally:
            end_span(span, error)
            structlog.contextvars.unbind_contextvars("request_id", "model")
        return events_pb2.SubmitReply(model_version=job.model_version, model=job.model)

    async def _admit_and_queue(self, job: events_pb2.Job, span: Span) -> str:
        admission = await admit(job, self._catalog, self._liveness)
        if admission.via == "fallback":
            log.info("job_sent_to_fallback", requested=job.model, fallback=admission.model)
        job.model, job.model_version = admission.model, admission.version
        if job.attempt > 0:
            # A migrated request already holds its tenant's share, and its priority was raised on purpose.
            job.priority = effective_priority(job.priority)
        else:
            allowed = await self._tenants.acquire(job.tenant, job.request_id, job.deadline)
            job.priority = effective_priority(job.priority, allowed)
        worker = self._dispatch.choose(job) if self._dispatch is not None else None
        if worker:
            span.set_attribute("llmserve.preferred_worker", worker)
        try:
            if self._direct is not None and await self._direct.handed_before(job):
                queued = False  # a resubmission of an attempt a worker already runs
            else:
                queued = await self.queues.publish(job, headers_for(span), worker, self._direct.hand_off if self._direct else None)
        except BaseException:
            if job.attempt == 0:
                await self._tenants.forget(job.tenant, job.request_id)
            raise
        if not queued:
            if job.attempt == 0 and await self._tenants.finished(job.request_id):
                # The first submission ran to its end already: nothing will come on its token subject.
                await self._tenants.forget(job.tenant, job.request_id)
                raise ServiceError(
                    events_pb2.ERROR_CODE_FAILED_PRECONDITION,
                    f"request id {job.request_id} belongs to a request that has finished; send a new id",
                    reason="duplicate_finished",
                )
            log.info("job_duplicate_ignored")
            return "duplicate"
        log.info("job_queued", version=job.model_version, priority=job.priority, **({"worker": worker} if worker else {}))
        if worker:
            metrics.PREFERRED_DISPATCHES.labels(model=job.model).inc()
        return "queued"


def _rejected(exc: ServiceError) -> events_pb2.SubmitReply:
    reply = events_pb2.SubmitReply(error_code=exc.code, error_message=exc.message, reason=exc.reason)
    if exc.retry_after_s is not None:
        reply.retry_after_s = exc.retry_after_s
    return reply

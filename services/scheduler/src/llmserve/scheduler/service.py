"""The scheduler's NATS side: answers submissions and publishes accepted jobs to JetStream."""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import Subjects
from llmserve.scheduler import metrics
from llmserve.scheduler.admission import admit, effective_priority
from llmserve.v1 import events_pb2

log = structlog.get_logger()

# JetStream's error code for "maximum messages exceeded" on a stream with discard=new.
_STREAM_FULL_CODES = {10077}


class Scheduler:
    def __init__(self, nc: NATS, subjects: Subjects, catalog: ModelCatalog, liveness: LivenessTable) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._catalog = catalog
        self._liveness = liveness
        self._sub = None
        self.queued_jobs = 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            self._subjects.submit, queue=Subjects.SCHEDULER_QUEUE_GROUP, cb=self._on_submit
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.drain()

    async def refresh_queue_depth(self) -> None:
        """Reads how many jobs wait in the queue, for heartbeats and the scheduler's metrics."""
        try:
            info = await self._js.stream_info(self._subjects.jobs_stream)
        except Exception:  # reconnecting: keep the last figure
            return
        self.queued_jobs = info.state.messages
        metrics.QUEUED_JOBS.set(self.queued_jobs)

    def fill_beat(self, beat: events_pb2.Heartbeat) -> None:
        beat.queued_jobs = self.queued_jobs

    async def _on_submit(self, msg: Msg) -> None:
        reply = await self.submit(msg.data)
        if msg.reply:
            await msg.respond(reply.SerializeToString())

    async def submit(self, data: bytes) -> events_pb2.SubmitReply:
        try:
            job = events_pb2.Job.FromString(data)
        except Exception:
            return _rejected(ServiceError.invalid("submission is not a llmserve.v1.Job"))
        structlog.contextvars.bind_contextvars(request_id=job.request_id, model=job.model)
        try:
            job.model_version = await admit(job, self._catalog, self._liveness)
            job.priority = effective_priority(job.priority)
            outcome = await self._enqueue(job)
        except ServiceError as exc:
            log.info("job_rejected", error=exc.message, code=events_pb2.ErrorCode.Name(exc.code))
            # An unknown model name comes from the client: it must not become a label of its own.
            model = "unknown" if exc.code == events_pb2.ERROR_CODE_NOT_FOUND else job.model
            metrics.SUBMISSIONS.labels(model=model, outcome=exc.code_name).inc()
            return _rejected(exc)
        except Exception as exc:
            log.exception("submit_failed")
            metrics.SUBMISSIONS.labels(model="unknown", outcome="internal").inc()
            return _rejected(ServiceError.internal(f"scheduler failed: {type(exc).__name__}"))
        else:
            metrics.SUBMISSIONS.labels(model=job.model, outcome=outcome).inc()
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "model")
        return events_pb2.SubmitReply(model_version=job.model_version, model=job.model)

    async def _enqueue(self, job: events_pb2.Job) -> str:
        subject = self._subjects.jobs(job.model, job.model_version, job.priority)
        try:
            ack = await self._js.publish(
                subject, job.SerializeToString(), timeout=5.0, headers={"Nats-Msg-Id": _message_id(job)}
            )
        except APIError as exc:
            if exc.err_code in _STREAM_FULL_CODES:
                raise ServiceError(events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED, "the job queue is full", retry_after_s=1.0) from exc
            raise
        if ack.duplicate:
            log.info("job_duplicate_ignored")
            return "duplicate"
        log.info("job_queued", subject=subject)
        await self._nc.publish(self._subjects.doorbell(job.model, job.model_version), b"")
        return "queued"


def _message_id(job: events_pb2.Job) -> str:
    """JetStream's de-duplication key: a resubmitted request runs once, a migrated one runs again."""
    return job.request_id if job.attempt == 0 else f"{job.request_id}.{job.attempt}"


def _rejected(exc: ServiceError) -> events_pb2.SubmitReply:
    reply = events_pb2.SubmitReply(error_code=exc.code, error_message=exc.message)
    if exc.retry_after_s is not None:
        reply.retry_after_s = exc.retry_after_s
    return reply

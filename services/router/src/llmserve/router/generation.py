"""Serving logic shared by the gRPC API and the REST bridge: submit a job, relay its chunks.

The router owns a request from submission to its final chunk: it subscribes to the token subject
first, submits, relays chunks in order, and tells the worker to stop when the client goes away.

A client whose router died mid-stream re-attaches through any other router (`stream(...,
attach=True)`): that router asks the workers who holds the request id, takes the job and the chunks
so far from the holder, and owns the request from there, migrations included. Every relayed chunk
carries its index among the request's pieces (TokenChunk.index), the position clients resume from.

A request whose workers died or stalled twice while it ran is quarantined rather than migrated
again (see version_server.py in the worker for how the second worker names it).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.errors import ServiceError
from llmserve.common.job_client import JobClient, StreamStalled, TokenStream, WorkerLost
from llmserve.common.natsio import usable
from llmserve.common.startup import Backoff
from llmserve.common.subjects import Subjects
from llmserve.common.tracing import Context, Span, SpanKind, end_span, headers_for, start_span
from llmserve.router import metrics
from llmserve.v1 import common_pb2, events_pb2

log = structlog.get_logger()

# Waits between the submissions of a continuation while no worker looks live.
_RESUBMIT_BACKOFF = Backoff(first_s=0.25, max_s=0.25)


def _unavailable(exc: ServiceError) -> bool:
    return exc.code == events_pb2.ERROR_CODE_UNAVAILABLE


# Room left in a NATS message for the Job's other fields and headers.
_PAYLOAD_HEADROOM = 4096


@dataclass(frozen=True)
class StreamTimeouts:
    # Seconds the scheduler may take to accept or refuse.
    submit_s: float
    # Longest wait for the first chunk (includes queueing).
    first_chunk_s: float
    # Longest silence between chunks.
    stall_s: float
    # How long a first submission is retried while no scheduler answers (bounded by the deadline too).
    submit_retry_s: float = 10.0
    # How long a re-attach looks for the worker holding the request (it may be between two workers).
    attach_s: float = 3.0


@dataclass
class _Progress:
    """What one request's client has received so far (a continuation resumes after it)."""

    ids: list[int] = field(default_factory=list)
    chars: int = 0
    # Pieces (chunks with tokens, or the final one) delivered, every attempt together: the next index.
    chunks: int = 0
    migrations: int = 0
    submitted: bool = False
    finished: bool = False
    # Re-attached to a request another router started (its first token was timed there).
    attached: bool = False
    # The current attempt: pieces delivered, and whether its worker runs it on trial (Job.crashes).
    attempt_pieces: int = 0
    on_trial: bool = False
    started: float = field(default_factory=time.monotonic)
    # When the previous chunk was delivered (the start, before the first).
    last: float = 0.0

    def __post_init__(self) -> None:
        self.last = self.started

    def deliver(self, chunk: events_pb2.TokenChunk, now: float, model: str, span: Span) -> None:
        chunk.index = self.chunks
        self.chunks += 1
        self.attempt_pieces += 1
        if not self.ids and self.migrations == 0 and not self.attached:
            metrics.TIME_TO_FIRST_TOKEN.labels(model=model).observe(now - self.started)
            metrics.RECENT.first_token(now - self.started)
            span.add_event("first_token", {"ttft_s": now - self.started, "worker": chunk.worker_id})
            log.info("first_token", ttft_s=round(now - self.started, 4), worker=chunk.worker_id)
        else:
            metrics.INTER_TOKEN_LATENCY.labels(model=model).observe(now - self.last)
        self.last = now
        self.ids.extend(chunk.token_ids)
        self.chars += len(chunk.text)


class GenerationService:
    def __init__(self, nc: NATS, subjects: Subjects, timeouts: StreamTimeouts, max_migrations: int = 3) -> None:
        self._nc = nc
        self._subjects = subjects
        self._jobs = JobClient(nc, subjects, timeouts.submit_s)
        self._timeouts = timeouts
        self._max_migrations = max_migrations
        self._streams: set[TokenStream] = set()
        # Set when the router shuts down: requests its streams leave unfinished keep running on their
        # workers, for their clients to re-attach to through another router.
        self.leaving = False

    async def watch_instances(self) -> None:
        """Listens for the monitor's verdicts: streams on a dead worker migrate at once."""

        async def _on_dead(msg: Msg) -> None:
            try:
                event = events_pb2.InstanceEvent.FromString(msg.data)
            except Exception:
                return
            for stream in list(self._streams):
                if stream.worker_id == event.instance_id:
                    stream.interrupt(event.instance_id, "declared dead")

        await self._nc.subscribe(self._subjects.event("instance.dead"), cb=_on_dead)

    def check_size(self, job: events_pb2.Job) -> bytes:
        data = job.SerializeToString()
        limit = self._nc.max_payload - _PAYLOAD_HEADROOM
        if len(data) > limit:
            raise ServiceError.invalid(f"the request is {len(data)} bytes; this cluster accepts at most {limit}")
        return data

    async def stream(
        self, job: events_pb2.Job, api: str = "grpc", trace_parent: Context | None = None, attach: bool = False
    ) -> AsyncIterator[events_pb2.TokenChunk]:
        """Yields the job's chunks in order, the final one last, each with its index. Error finals
        become ServiceError.

        The router owns the request until its final chunk: when its worker dies, stalls or hands it
        back, the request is resubmitted as a continuation (prompt + tokens so far, same request id and
        settings, raised priority) and the client's stream goes on without a gap or a repeat.
        `trace_parent` is the client's trace context, if it sent one: the request's span joins it.

        With `attach`, nothing is submitted: the running (or lately finished) request of job's id and
        tenant is found on its worker and relayed from its first piece (NOT_FOUND when no worker holds
        it); the caller skips the pieces its client already has.
        """
        if not usable(self._nc):
            raise ServiceError.unavailable("the router is not connected to NATS (yet); its /readyz says why")
        data = b"" if attach else self.check_size(job)
        span = start_span(
            "router.generate", trace_parent, SpanKind.SERVER, **{
                "llmserve.request_id": job.request_id, "llmserve.model": job.model, "llmserve.tenant": job.tenant,
                "llmserve.priority": job.priority, "llmserve.api": api,
            },
        )
        # Every submission of this request (continuations too) carries the router's span to the scheduler.
        trace_headers = headers_for(span)
        tokens = await self._jobs.stream(job)
        self._streams.add(tokens)
        progress = _Progress()
        outcome = "cancelled"
        usage = None
        # Why the worker is told to stop when the stream ends unfinished.
        stop_reason = "client_gone"
        metrics.IN_FLIGHT.inc()
        try:
            if attach:
                job = await self._adopt(job, tokens, progress)
                span.add_event("attached", {"llmserve.attempt": job.attempt, "from_worker": tokens.worker_id})
            else:
                give_up = time.monotonic() + self._wait_limit(job, self._timeouts.submit_retry_s)
                job.model, job.model_version = await self._jobs.submit_patiently(data, give_up, headers=trace_headers)
                span.add_event("queued", {"llmserve.model": job.model, "llmserve.version": job.model_version})
            progress.submitted = True
            timeout = self._wait_limit(job, self._timeouts.first_chunk_s)
            while True:
                try:
                    chunk = await tokens.next(timeout)
                except (WorkerLost, StreamStalled) as exc:
                    job = await self._migrate(job, tokens, progress, exc, span, trace_headers)
                    timeout = self._wait_limit(job, self._timeouts.first_chunk_s)
                    continue
                timeout = self._wait_limit(job, self._timeouts.stall_s)
                if not chunk.token_ids and not chunk.final:
                    # "taken by worker X" or "on trial" marker, or tokens still held back
                    progress.on_trial = progress.on_trial or chunk.on_trial
                    continue
                progress.deliver(chunk, time.monotonic(), job.model, span)
                if chunk.final:
                    progress.finished = True
                    if chunk.finish_reason == common_pb2.FINISH_REASON_ERROR:
                        raise ServiceError(chunk.error_code or events_pb2.ERROR_CODE_INTERNAL, chunk.error_message)
                    outcome, usage = "ok", chunk.usage
                    metrics.GENERATED_TOKENS.labels(model=job.model).inc(chunk.usage.completion_tokens)
                    metrics.REQUEST_DURATION.labels(model=job.model).observe(time.monotonic() - progress.started)
                    yield chunk
                    return
                yield chunk
        except ServiceError as exc:
            outcome = exc.code_name
            if exc.code == events_pb2.ERROR_CODE_UNSPECIFIED:
                outcome = "error"
            stop_reason = f"failed_{outcome}"
            raise
        finally:
            self._streams.discard(tokens)
            metrics.IN_FLIGHT.dec()
            metrics.request_finished(job.model, api, job.tenant, outcome, usage)
            metrics.RECENT.finished(outcome)
            await tokens.close()
            span.set_attributes({"llmserve.outcome": outcome, "llmserve.migrations": progress.migrations,
                                 "llmserve.completion_tokens": len(progress.ids)})
            end_span(span, error=None if outcome in ("ok", "cancelled") else outcome)
            await asyncio.shield(self._settle(job, progress, outcome, stop_reason))

    async def _adopt(self, job: events_pb2.Job, tokens: TokenStream, progress: _Progress) -> events_pb2.Job:
        """Re-attach: the job as its worker runs it, with the chunks so far queued on `tokens`."""
        found = await self._jobs.find(job.request_id, self._wait_limit(job, self._timeouts.attach_s))
        if found is None or found.job.tenant != job.tenant:
            # Another tenant's request is not found either: ids are not secrets.
            raise ServiceError.not_found(f"no request {job.request_id} is running or finished lately for this caller")
        held = found.job
        tokens.new_attempt(held.attempt)
        tokens.preload(found.chunks)
        progress.ids = list(held.resume_token_ids)
        progress.chars = held.resume_text_chars
        progress.chunks = held.resume_chunks
        progress.migrations = held.attempt
        progress.attached = True
        log.info("request_attached", request_id=held.request_id, attempt=held.attempt, chunks=len(found.chunks))
        return held

    async def _migrate(
        self, job: events_pb2.Job, tokens: TokenStream, progress: _Progress, lost: Exception, span: Span, trace_headers: dict[str, str]
    ) -> events_pb2.Job:
        """Resubmits the request as a continuation after what the client has; returns the new attempt's job."""
        self._check_deadline(job)
        if isinstance(lost, StreamStalled) and not tokens.worker_id:
            raise ServiceError.unavailable("no worker started the request in time") from None
        cause = lost.cause if isinstance(lost, WorkerLost) else "stalled"
        crashed = cause in ("worker_dead", "stalled")
        if crashed and progress.on_trial and progress.attempt_pieces == 0:
            self._quarantine(job, tokens.worker_id)
        if progress.migrations >= self._max_migrations:
            raise ServiceError.unavailable(f"the request failed on {progress.migrations + 1} workers") from None
        progress.migrations += 1
        metrics.MIGRATIONS.labels(model=job.model, cause=cause).inc()
        await self._jobs.cancel(job.request_id, "migrated", job.attempt)
        job = continuation(job, progress.ids, progress.chars, progress.chunks, crashed)
        progress.attempt_pieces = 0
        progress.on_trial = False
        log.info("request_migrated", request_id=job.request_id, attempt=job.attempt, reason=str(lost), resumed_tokens=len(progress.ids))
        span.add_event("migration", {"cause": cause, "reason": str(lost), "attempt": job.attempt, "resumed_tokens": len(progress.ids),
                                     "from_worker": tokens.worker_id})
        tokens.new_attempt(job.attempt)
        await self._resubmit(job, trace_headers)
        return job

    def _quarantine(self, job: events_pb2.Job, worker_id: str) -> None:
        """A suspect request's worker died while it ran on trial: it is not migrated again."""
        crashes = job.crashes + 1
        metrics.QUARANTINED.labels(model=job.model).inc()
        # The input's hash, not its text: operators find the request without logs holding user data.
        log.error("request_quarantined", request_id=job.request_id, input_sha256=input_hash(job), crashes=crashes,
                  last_worker=worker_id, tenant=job.tenant)
        raise ServiceError(
            events_pb2.ERROR_CODE_INTERNAL,
            f"request {job.request_id} was stopped: the workers running it crashed or stalled {crashes} times, the last time while "
            "it ran alone on trial; it is quarantined and will not be retried",
            reason="quarantined",
        )

    async def _settle(self, job: events_pb2.Job, progress: _Progress, outcome: str, stop_reason: str) -> None:
        """After the stream ended, however: stop the worker if it still runs the job, free the tenant's share."""
        if progress.submitted and not progress.finished and self.leaving and stop_reason == "client_gone":
            log.info("request_left_running", request_id=job.request_id, reason="router_stopping")
        elif progress.submitted and not progress.finished:
            # Client gone, deadline hit or stream failed: the worker must stop spending compute on it.
            await self._jobs.cancel(job.request_id, stop_reason, job.attempt)
        elif not progress.submitted:
            log.info("request_not_queued", request_id=job.request_id, outcome=outcome)
        await self._jobs.done(job)

    def _wait_limit(self, job: events_pb2.Job, limit_s: float) -> float:
        """How long to wait for the next chunk: the limit, or less when the request's deadline is closer."""
        if job.deadline:
            remaining = job.deadline - time.time()
            if remaining <= 0:
                raise ServiceError.deadline("the request's deadline passed")
            return min(limit_s, remaining)
        return limit_s

    def _check_deadline(self, job: events_pb2.Job) -> None:
        if job.deadline and time.time() >= job.deadline:
            raise ServiceError.deadline("the request's deadline passed")

    async def _resubmit(self, job: events_pb2.Job, trace_headers: dict[str, str]) -> None:
        """Submits a continuation, retrying about every 0.25 s while no worker is live (or no scheduler
        answers) for up to the stall timeout: right after a worker dies or NATS comes back, the others'
        next heartbeat may be a second away. Past the request's deadline it fails with DEADLINE_EXCEEDED."""
        give_up = time.monotonic() + self._wait_limit(job, self._timeouts.stall_s)
        try:
            await self._jobs.submit_patiently(job.SerializeToString(), give_up, _unavailable, _RESUBMIT_BACKOFF, trace_headers)
        except ServiceError as exc:
            if exc.code == events_pb2.ERROR_CODE_UNAVAILABLE:
                self._check_deadline(job)
            raise


def continuation(
    job: events_pb2.Job, delivered_ids: list[int], delivered_chars: int, delivered_chunks: int = 0, crashed: bool = False
) -> events_pb2.Job:
    """The same request, to be resumed after the tokens the client already has, on the same model
    version; `crashed`: the attempt ended because its worker died or stalled (it counts in Job.crashes)."""
    resumed = events_pb2.Job()
    resumed.CopyFrom(job)
    resumed.attempt = job.attempt + 1
    resumed.resume_token_ids[:] = delivered_ids
    resumed.resume_text_chars = delivered_chars
    resumed.resume_chunks = delivered_chunks
    resumed.crashes = job.crashes + int(crashed)
    # Migrated work goes ahead of new work of the same level: its client has been waiting longest.
    resumed.priority = min(common_pb2.PRIORITY_CRITICAL, max(job.priority, common_pb2.PRIORITY_NORMAL) + 1)
    return resumed


def input_hash(job: events_pb2.Job) -> str:
    """SHA-256 of a job's input (prompt, or chat turns and tools), for logs that must not hold the text."""
    digest = hashlib.sha256()
    if job.WhichOneof("input") == "prompt":
        digest.update(job.prompt.encode())
    else:
        digest.update(job.messages.SerializeToString(deterministic=True))
    for tool in job.tools:
        digest.update(tool.SerializeToString(deterministic=True))
    return digest.hexdigest()

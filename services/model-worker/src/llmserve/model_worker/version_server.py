"""Serving one model version: the lifecycle of its jobs, from the pull to the final chunk.

The pull loop takes jobs when the engine has free slots; each job runs as a task that prepares the
engine's request (job_request.py), relays the engine's outputs as chunks (chunk_publisher.py) and
counts the outcome in the metrics. Drain stops the loop and hands back what does not finish in time;
`wind_down` is how a version the worker moved away from finishes its queue first.

Suspect jobs (Job.crashes > 0: a worker died or stalled while running them before) run "on trial",
one at a time: a suspect starts only when no other suspect on this worker is still without its first
token, and its router is told (TokenChunk.on_trial, flushed) before it starts. If this worker dies
now, the router knows which request was on trial and quarantines it rather than let it take down
one worker after another; the other requests migrate as usual.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS

from llmserve.common.prefix_keys import job_prefix_keys
from llmserve.common.subjects import DIRECT_UNTIL_HEADER, Subjects, attempt_key
from llmserve.common.tracing import Context, SpanKind, end_span, extract, start_span
from llmserve.model_worker import metrics
from llmserve.model_worker.attach_book import AttachBook
from llmserve.model_worker.cancels import RecentCancels
from llmserve.model_worker.chunk_publisher import ChunkPublisher
from llmserve.model_worker.constraints import ConstraintCompiler
from llmserve.model_worker.engine import Engine, EngineOutput
from llmserve.model_worker.job_puller import JobPuller
from llmserve.model_worker.job_request import JobRejected, engine_request
from llmserve.model_worker.loader import LoadedModel, free_model_memory
from llmserve.model_worker.model_calls import ModelCallResponder
from llmserve.model_worker.prefix_announcer import PrefixAnnouncer
from llmserve.v1 import common_pb2, events_pb2, registry_pb2

log = structlog.get_logger()

# How long a job's ack is sent again until JetStream confirms it: well under the consumers' ack wait
# (30 s), after which an unconfirmed job would be delivered again.
_ACK_CONFIRM_S = 20.0
# How long the pull loop sleeps when every queue is empty and no doorbell rings.
_IDLE_WAIT_S = 0.5


class VersionServer:
    """Serves one model version: its engine, its job queue consumers, its running jobs.

    A worker has one of these normally, and two for a moment while it moves to a new version.
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        engine: Engine,
        loaded: LoadedModel,
        record: registry_pb2.ModelVersion,
        instance_id: str,
        priority_aging_s: float = 0.0,
        preferred_wait_s: float = 0.5,
        stream_replicas: int = 1,
        book: AttachBook | None = None,
        crash_marker: str = "",
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self.engine = engine
        self._loaded = loaded
        # Kept after close(), which lets go of the model.
        self.numerics = loaded.numerics
        self.record = record
        self.instance_id = instance_id
        self.puller = JobPuller(
            nc, subjects, record.name, record.version, aging_step_s=priority_aging_s, instance_id=instance_id, preferred_wait_s=preferred_wait_s,
            stream_replicas=stream_replicas,
        )
        # Prefix keys of the prompts this version's prefix cache holds, for heartbeats; `on_announce`
        # is called when a job adds keys not announced before.
        self.announcer = PrefixAnnouncer(getattr(engine, "prefix_cache", None))
        self.on_announce: Callable[[], None] | None = None
        self._constraints = ConstraintCompiler(loaded.tokenizer, loaded.eos_ids)
        self.model_calls = ModelCallResponder(
            nc, subjects, record.name, record.version, loaded.tokenizer, min(loaded.max_context, engine.max_kv_tokens), loaded.numerics,
            loaded.architecture,
        )
        self._chunks = ChunkPublisher(nc, instance_id, record.version, book)
        # Held by the suspect job on trial until its first token is out (see the module's docstring).
        self._trial = asyncio.Lock()
        # Tests only: a job whose input contains this marker aborts the worker as it starts.
        self._crash_marker = crash_marker
        self._doorbell = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._jobs: dict[str, asyncio.Task[None]] = {}
        # Request id and attempt (see Job.attempt) of each running job, by job key.
        self._attempts: dict[str, tuple[str, int]] = {}
        self._cancels = RecentCancels()
        self._pull_task: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._direct_sub = None

    @property
    def book(self) -> AttachBook:
        """Every chunk published for each running (and lately finished) request."""
        return self._chunks.book

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def device(self):
        return self._loaded.device

    async def close(self) -> None:
        """Stops the engine and lets go of the weights (a wound-down version's memory comes back)."""
        if self.engine is None:
            return
        await self.engine.stop()
        device = self._loaded.device
        self._loaded = None
        self.engine = None
        free_model_memory(device)

    async def start(self) -> None:
        await self.model_calls.start()
        await self.puller.start(on_ring=self._doorbell.set)
        self._direct_sub = await self._nc.subscribe(self._subjects.direct(self.record.name, self.version, self.instance_id), cb=self._on_direct)
        self._pull_task = asyncio.create_task(self._pull_loop(), name=f"pull-loop-v{self.version}")

    def cancel(self, request: events_pb2.Cancel) -> None:
        # Kept, for a job that does not run yet (queued, or taken and not in the engine yet).
        self._cancels.record(request)
        for key, (request_id, attempt) in list(self._attempts.items()):
            # A cancel for an earlier attempt must not stop a migrated request this worker now runs.
            if request_id == request.request_id and attempt <= request.max_attempt and self.engine.cancel(key):
                log.info("job_cancel_requested", request_id=request_id, attempt=attempt, reason=request.reason)

    async def drain(self, grace_s: float) -> None:
        """Stops taking jobs, lets running ones finish within grace_s, hands back the rest, then stops."""
        if self._draining:
            return
        self._draining = True
        if self._direct_sub is not None:
            await self._direct_sub.unsubscribe()
            self._direct_sub = None
        if self._pull_task is not None:
            self._pull_task.cancel()
            await asyncio.gather(self._pull_task, return_exceptions=True)
        if self._jobs:
            log.info("worker_draining", running=len(self._jobs), version=self.version)
            _, pending = await asyncio.wait(list(self._jobs.values()), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.info("worker_handing_back", requests=len(pending), version=self.version)
                await asyncio.gather(*pending, return_exceptions=True)
        await self.puller.stop()
        await self.model_calls.stop()

    async def wind_down(self, grace_s: float, settle_s: float) -> None:
        """Finishes this version's work after the worker moved on: keeps taking its queued jobs until
        the queue is empty and nothing runs (for at least settle_s, so jobs admitted just before the
        schedulers saw the move are taken too), or until grace_s; then drains."""
        started = time.monotonic()
        while time.monotonic() - started < grace_s:
            if time.monotonic() - started >= settle_s and not self._jobs and await self.puller.queue_empty():
                break
            self._slot_freed.clear()
            await _wait(0.25, self._slot_freed)
        await self.drain(0.0 if self._jobs and time.monotonic() - started >= grace_s else grace_s)

    # -- taking jobs --------------------------------------------------------------------------
    async def _pull_loop(self) -> None:
        while not self._draining:
            free = self.engine.stats().slots_free - self._starting()
            # Every slot busy: only a job that can preempt running work is taken, one at a time.
            above = self._preemptible_level() if free <= 0 else None
            if free <= 0 and above is None:
                self._slot_freed.clear()
                await _wait(_IDLE_WAIT_S, self._slot_freed)
                continue
            self._doorbell.clear()
            self._slot_freed.clear()
            try:
                msgs = await self.puller.pull(max(free, 1), above=above)
            except Exception as exc:  # NATS reconnecting: try again shortly
                log.warning("pull_failed", error=str(exc))
                await asyncio.sleep(_IDLE_WAIT_S)
                continue
            if not msgs:
                # A slot freed while full also ends the wait: ordinary jobs may be taken again. A job
                # waiting for another worker may be taken here once it waited long enough.
                due = self.puller.foreign_due_s()
                wait = _IDLE_WAIT_S if due is None else min(_IDLE_WAIT_S, due + 0.01)
                await _wait(wait, self._doorbell, *((self._slot_freed,) if above is not None else ()))
                continue
            for msg in msgs:
                self._confirm_ack(msg)
                await self._take(events_pb2.Job.FromString(msg.data), extract(msg.headers))

    async def _take(self, job: events_pb2.Job, trace_parent: Context | None) -> None:
        """Starts a job taken from the queue or handed here directly (one that expired is dropped)."""
        if job.deadline and time.time() > job.deadline:
            await self._drop_expired(job)
            return
        key = attempt_key(job.request_id, job.attempt)
        task = asyncio.create_task(self._run_job(job, trace_parent), name=f"job-{key}")
        self._jobs[key] = task
        self._attempts[key] = (job.request_id, job.attempt)
        task.add_done_callback(lambda _t, key=key: self._job_done(key))

    async def _on_direct(self, msg) -> None:
        """A job a scheduler hands here while the queue has no stream leader (scheduler/direct.py):
        taken only with a slot free, before the hand-off's time is up, and not while draining."""
        try:
            job = events_pb2.Job.FromString(msg.data)
            until = float((msg.headers or {}).get(DIRECT_UNTIL_HEADER, "0"))
        except Exception:
            return  # not a job: the scheduler's request times out and it asks another worker
        key = attempt_key(job.request_id, job.attempt)
        running = key in self._jobs
        free = self.engine.stats().slots_free - self._starting() if self.engine is not None else 0
        taken = running or (not self._draining and free > 0 and time.time() <= until and job.model_version == self.version)
        if taken and not running:
            log.info("job_taken_directly", request_id=job.request_id, attempt=job.attempt)
            await self._take(job, extract(msg.headers))
        if msg.reply:
            await msg.respond(events_pb2.DirectJobReply(taken=taken).SerializeToString())

    def _confirm_ack(self, msg) -> None:
        """Acks a job taken, in the background, until JetStream confirms it: an ack lost while a NATS
        cluster elects a new stream leader would let the job be delivered again after the ack wait,
        and run twice. The job starts at once meanwhile."""
        task = asyncio.create_task(_ack_until_confirmed(msg), name="ack")
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _drop_expired(self, job: events_pb2.Job) -> None:
        """A job whose deadline passed while queued never runs; its router has already answered the client."""
        log.info("job_expired", request_id=job.request_id, late_s=round(time.time() - job.deadline, 3))
        metrics.JOBS.labels(outcome="expired").inc()
        metrics.QUEUE_TIME.labels(priority=str(job.priority)).observe(max(0.0, time.time() - job.submitted_at))
        await self._chunks.error(job, 0, events_pb2.ERROR_CODE_DEADLINE_EXCEEDED, "deadline passed while the request was queued")

    def _preemptible_level(self) -> int | None:
        """With every slot busy: the level a job must be above to preempt running work here (None: no
        job may; see FlatBatchingEngine.preemptible_level)."""
        level = getattr(self.engine, "preemptible_level", None)
        return level() if level is not None and self._starting() == 0 else None

    def _starting(self) -> int:
        """Jobs taken whose engine request has not been admitted yet (counted against free slots)."""
        return max(0, len(self._jobs) - self.engine.stats().slots_busy)

    def _job_done(self, key: str) -> None:
        self._jobs.pop(key, None)
        self._attempts.pop(key, None)
        self._slot_freed.set()

    # -- running one job ----------------------------------------------------------------------
    async def _run_job(self, job: events_pb2.Job, trace_parent: Context | None = None) -> None:
        structlog.contextvars.bind_contextvars(request_id=job.request_id, model=job.model)
        span = start_span("worker.generate", trace_parent, SpanKind.CONSUMER, **{
            "llmserve.request_id": job.request_id, "llmserve.model": job.model, "llmserve.version": job.model_version,
            "llmserve.attempt": job.attempt, "llmserve.priority": job.priority, "llmserve.worker": self.instance_id,
        })
        span.add_event("dequeued", {"queued_s": max(0.0, time.time() - job.submitted_at)})
        # seq 0 says "taken by this worker": the router knows whom to watch before any token exists.
        await self._chunks.started(job)
        seq = 1
        taken = time.perf_counter()
        out = None
        error = None
        on_trial = False
        try:
            if job.crashes:
                await self._trial.acquire()
                on_trial = True
                log.info("suspect_on_trial", attempt=job.attempt, crashes=job.crashes)
                await self._chunks.on_trial(job, seq)
                seq += 1
            await self._crash_if_marked(job)
            context = min(self._loaded.max_context, self.engine.max_kv_tokens)
            request = engine_request(job, self._loaded.tokenizer, context, self._constraints)
            prepared = time.perf_counter()
            first = 0.0
            if len(request.resume_ids) >= request.sampling.max_tokens:
                # Migrated after its last token but before its final chunk: nothing left to generate.
                done = EngineOutput(finish_reason=common_pb2.FINISH_REASON_LENGTH, prompt_tokens=len(request.prompt_ids),
                                    completion_tokens=len(request.resume_ids))
                await self._chunks.output(job, seq, done)
                return
            if self._cancels.covers(job.request_id, job.attempt):
                # Cancelled before it reached the engine (nothing awaits between this check and the
                # engine's knowing the job, so a later cancel finds it there).
                log.info("job_cancelled_before_start", attempt=job.attempt)
                span.add_event("cancelled")
                await self._chunks.output(job, seq, EngineOutput(finish_reason=common_pb2.FINISH_REASON_CANCELLED,
                                                                 prompt_tokens=len(request.prompt_ids),
                                                                 completion_tokens=len(request.resume_ids)))
                return
            async for out in self.engine.submit(request):
                metrics.GENERATED_TOKENS.inc(len(out.token_ids))
                await self._chunks.output(job, seq, out)
                if on_trial:
                    # Its first tokens are out (flushed): the next suspect may start.
                    await self._chunks.flush()
                    self._trial.release()
                    on_trial = False
                if seq == 1:  # seq 0 was the "started" chunk
                    first = time.perf_counter()
                    self._announce(job, request.prompt_ids)
                    span.add_event("prefill_done", {"prompt_tokens": len(request.prompt_ids), "resumed_tokens": len(request.resume_ids),
                                                    "prefill_s": first - prepared})
                seq += 1
            queued_s = job_started_wall(taken) - job.submitted_at
            metrics.QUEUE_TIME.labels(priority=str(job.priority)).observe(max(0.0, queued_s))
            if out is not None:
                span.add_event("decode_done", {"completion_tokens": out.completion_tokens,
                                               "decode_s": time.perf_counter() - (first or prepared)})
                span.set_attribute("llmserve.finish_reason", common_pb2.FinishReason.Name(out.finish_reason))
                metrics.JOBS.labels(outcome=common_pb2.FinishReason.Name(out.finish_reason).removeprefix("FINISH_REASON_").lower()).inc()
            log.info(
                "job_finished",
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=out.completion_tokens if out else 0,
                attempt=job.attempt,
                queued_s=round(queued_s, 4),
                prepare_s=round(prepared - taken, 4),
                first_token_s=round(first - prepared, 4),
                total_s=round(time.perf_counter() - taken, 4),
            )
        except JobRejected as exc:
            error = str(exc)
            log.info("job_rejected", error_code=events_pb2.ErrorCode.Name(exc.code), error=str(exc))
            metrics.JOBS.labels(outcome="rejected").inc()
            await self._chunks.error(job, seq, exc.code, str(exc))
        except asyncio.CancelledError:
            self.engine.cancel(attempt_key(job.request_id, job.attempt))
            span.add_event("handed_back" if self._draining else "cancelled")
            if self._draining:
                # Drain ran out of grace: hand the request back so a router resumes it elsewhere.
                log.info("job_handed_back", attempt=job.attempt, tokens_sent=seq - 1)
                await self._chunks.handed_back(job, seq)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("job_failed")
            metrics.JOBS.labels(outcome="failed").inc()
            await self._chunks.error(job, seq, events_pb2.ERROR_CODE_INTERNAL, error)
        finally:
            if on_trial:
                self._trial.release()
            self._chunks.book.ended(job)
            end_span(span, error)

    async def _crash_if_marked(self, job: events_pb2.Job) -> None:
        """Tests only (LLMSERVE_WORKER_TEST_CRASH_MARKER): a "query of death" that aborts the process as
        its prefill would start (what the worker published so far has gone out, as it would have in
        the milliseconds a real prefill takes)."""
        if not self._crash_marker:
            return
        texts = [job.prompt] if job.WhichOneof("input") == "prompt" else [m.content for m in job.messages.messages]
        if any(self._crash_marker in text for text in texts):
            log.warning("test_crash_marker_found", attempt=job.attempt)
            await self._chunks.flush()
            os.abort()

    def _announce(self, job: events_pb2.Job, prompt_ids: tuple[int, ...]) -> None:
        """After a prompt's prefill: its prefix keys go into the next heartbeat (at once when new)."""
        if self.announcer.add(job_prefix_keys(job), prompt_ids) and self.on_announce is not None:
            self.on_announce()


def job_started_wall(perf_at: float) -> float:
    """Wall-clock time of a perf_counter reading (queue time is measured against the router's wall clock)."""
    return time.time() - (time.perf_counter() - perf_at)


async def _wait(timeout: float, *events: asyncio.Event) -> None:
    """Until one of `events` is set, or `timeout`."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _ack_until_confirmed(msg) -> None:
    give_up = time.monotonic() + _ACK_CONFIRM_S
    while True:
        try:
            await msg.ack_sync(timeout=1.0)
            return
        except Exception as exc:  # no stream leader, or NATS reconnecting: the ack is idempotent
            if time.monotonic() >= give_up:
                log.warning("job_ack_unconfirmed", subject=msg.subject, error=f"{type(exc).__name__}: {exc}")
                return
            await asyncio.sleep(0.2)

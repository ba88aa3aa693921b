"""The client side of a job: submit it to a scheduler, read its chunks, cancel it, say it is done.

The router (for every client request) and the monitor (for its probes) talk to the cluster through
this one client, so both get the same guarantees: the token subject is subscribed before the job is
submitted, chunks come out in order and once each, and chunks of an attempt the caller gave up on
never reach it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from llmserve.common.errors import ServiceError
from llmserve.common.startup import Backoff
from llmserve.common.subjects import Subjects
from llmserve.v1 import events_pb2

log = structlog.get_logger()

# ServiceError.reason of a submission no scheduler answered (worth retrying; the job may not be queued).
NO_SCHEDULER = "no_scheduler"
# A scheduler answered but could not queue the job: JetStream had no stream leader for a moment (a
# NATS server of a cluster died and the stream is electing a new one).
QUEUE_UNAVAILABLE = "queue_unavailable"


def no_scheduler(exc: ServiceError) -> bool:
    """A refusal worth retrying: nobody could queue the job just now."""
    return exc.reason in (NO_SCHEDULER, QUEUE_UNAVAILABLE)


# Waits between the submissions of a new request while no scheduler answers.
SUBMIT_BACKOFF = Backoff(first_s=0.1, max_s=1.0)


class StreamStalled(Exception):
    """No chunk arrived in time."""


class WorkerLost(Exception):
    """The worker running this attempt was declared dead or handed the request back."""

    def __init__(self, worker_id: str, reason: str, cause: str = "worker_dead") -> None:
        super().__init__(f"worker {worker_id}: {reason}")
        self.worker_id = worker_id
        # For metrics: "worker_dead" or "handed_back".
        self.cause = cause


class TokenStream:
    """One request's token subject, subscribed before the job is submitted so no chunk arrives unheard.

    Chunks are re-ordered by sequence number within the current attempt; repeats are dropped, and so
    are chunks of earlier attempts (a worker the caller gave up on may still be talking).
    """

    def __init__(self, nc: NATS, subject: str) -> None:
        self._nc = nc
        self._subject = subject
        self._queue: asyncio.Queue[events_pb2.TokenChunk | WorkerLost] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._early: dict[int, events_pb2.TokenChunk] = {}
        self.attempt = 0
        self.next_seq = 0
        # The worker running the current attempt, once its first chunk said so.
        self.worker_id = ""

    async def open(self) -> TokenStream:
        async def _on_chunk(msg: Msg) -> None:
            try:
                self._queue.put_nowait(events_pb2.TokenChunk.FromString(msg.data))
            except Exception:
                pass  # not a TokenChunk: ignore rather than kill the stream

        # No flush needed: NATS handles one connection's protocol messages in order, so this SUB
        # reaches the server before the submission that follows it on the same connection.
        self._sub = await self._nc.subscribe(self._subject, cb=_on_chunk)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass  # connection closing: the server drops the subscription anyway
            self._sub = None

    def new_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.next_seq = 0
        self.worker_id = ""
        self._early.clear()

    def preload(self, chunks) -> None:
        """Chunks a worker sent before this stream was opened (a re-attach), read before later ones;
        the live copies of the same chunks are dropped as repeats."""
        for chunk in chunks:
            self._queue.put_nowait(chunk)

    def interrupt(self, worker_id: str, reason: str) -> None:
        """Wakes the reader with WorkerLost if worker_id runs the current attempt (monitor said it died)."""
        self._queue.put_nowait(WorkerLost(worker_id, reason))

    async def next(self, timeout_s: float) -> events_pb2.TokenChunk:
        """The next chunk of the current attempt; StreamStalled after timeout_s of silence."""
        while self.next_seq not in self._early:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                raise StreamStalled(f"no output for {timeout_s:.1f} s") from None
            if isinstance(item, WorkerLost):
                if item.worker_id and item.worker_id == self.worker_id:
                    raise item
                continue  # about a worker of an earlier attempt, or of none
            if item.attempt != self.attempt or item.seq < self.next_seq:
                continue
            if item.handed_back:
                raise WorkerLost(item.worker_id, "handed the request back", cause="handed_back")
            self.worker_id = self.worker_id or item.worker_id
            self._early[item.seq] = item
        chunk = self._early.pop(self.next_seq)
        self.next_seq += 1
        return chunk


class JobClient:
    """Submitting jobs and following them, over one NATS connection."""

    def __init__(self, nc: NATS, subjects: Subjects, submit_timeout_s: float) -> None:
        self.nc = nc
        self._subjects = subjects
        self._submit_timeout_s = submit_timeout_s

    async def stream(self, job: events_pb2.Job) -> TokenStream:
        """The job's token subject, subscribed: open it before submitting."""
        return await TokenStream(self.nc, job.reply_subject).open()

    async def submit(self, data: bytes, headers: dict[str, str] | None = None) -> tuple[str, int]:
        """Hands a serialized Job to a scheduler; returns the model (a fallback, maybe) and version it was
        queued for, or raises the scheduler's refusal as a ServiceError. `headers` carry the trace context."""
        try:
            msg = await self.nc.request(self._subjects.submit, data, timeout=self._submit_timeout_s, headers=headers or None)
        except NoRespondersError:
            raise ServiceError(events_pb2.ERROR_CODE_UNAVAILABLE, "no scheduler is running", reason=NO_SCHEDULER) from None
        except (TimeoutError, NatsTimeoutError):
            raise ServiceError(events_pb2.ERROR_CODE_UNAVAILABLE, "the scheduler did not answer in time", reason=NO_SCHEDULER) from None
        reply = events_pb2.SubmitReply.FromString(msg.data)
        if reply.error_code != events_pb2.ERROR_CODE_UNSPECIFIED:
            raise ServiceError(reply.error_code, reply.error_message, reply.retry_after_s or None, reason=reply.reason or None)
        return reply.model, reply.model_version

    async def submit_patiently(
        self,
        data: bytes,
        give_up_at: float,
        retry_if: Callable[[ServiceError], bool] = no_scheduler,
        backoff: Backoff = SUBMIT_BACKOFF,
        headers: dict[str, str] | None = None,
    ) -> tuple[str, int]:
        """submit(), retried while the refusal is one `retry_if` accepts (by default: no scheduler
        answered, one restarting or all busy for a moment) until the monotonic time give_up_at, with
        `backoff`'s waits. JetStream's duplicate window makes a retry of a job that did reach the queue
        harmless. Any other refusal is final."""
        attempt = 0
        while True:
            try:
                return await self.submit(data, headers)
            except ServiceError as exc:
                if not retry_if(exc):
                    raise
                delay = backoff.delay(attempt)
                if time.monotonic() + delay >= give_up_at:
                    raise
                if attempt == 0:
                    log.info("submit_retrying", reason=exc.message)
            attempt += 1
            await asyncio.sleep(delay)

    async def find(self, request_id: str, wait_s: float, gather_s: float = 0.1) -> events_pb2.AttachReply | None:
        """Asks every worker who holds the request (for a re-attach); None when none answers within
        wait_s. The question is asked again every half second meanwhile (the request may be between
        two workers), and the answers of gather_s after the first are compared: a worker that gave
        the request up may still hold an earlier attempt, the highest attempt wins."""
        replies: list[events_pb2.AttachReply] = []
        answered = asyncio.Event()

        async def _on_reply(msg: Msg) -> None:
            try:
                replies.append(events_pb2.AttachReply.FromString(msg.data))
            except Exception:
                return
            answered.set()

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=_on_reply)
        question = events_pb2.AttachRequest(request_id=request_id).SerializeToString()
        give_up = time.monotonic() + wait_s
        try:
            while not replies:
                await self.nc.publish(self._subjects.attach, question, reply=inbox)
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(answered.wait(), min(0.5, remaining))
                except TimeoutError:
                    continue
            await asyncio.sleep(gather_s)  # a window for the other holders' answers, not a wait for an event
            return max(replies, key=lambda r: (r.job.attempt, len(r.chunks)))
        finally:
            await sub.unsubscribe()

    async def done(self, job: events_pb2.Job) -> None:
        """Tells the schedulers the request ended, so its tenant's share is free again."""
        try:
            done = events_pb2.JobDone(request_id=job.request_id, tenant=job.tenant)
            await self.nc.publish(self._subjects.done, done.SerializeToString())
        except Exception as exc:  # the share's lease expires on its own
            log.warning("done_not_announced", request_id=job.request_id, error=str(exc))

    async def cancel(self, request_id: str, reason: str, attempt: int) -> None:
        """Asks the worker running any attempt up to `attempt` of the request to stop."""
        try:
            await self.nc.publish(
                self._subjects.cancel(request_id),
                events_pb2.Cancel(request_id=request_id, reason=reason, max_attempt=attempt).SerializeToString(),
            )
            log.info("request_cancelled", request_id=request_id, reason=reason)
        except Exception as exc:
            log.warning("cancel_failed", request_id=request_id, error=str(exc))

"""Serving logic shared by the gRPC API and the REST bridge: submit a job, relay its chunks.

The router owns a request from submission to its final chunk: it subscribes to the token subject
first, submits, relays chunks in order, and tells the worker to stop when the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from llmserve.common.errors import ServiceError
from llmserve.common.subjects import Subjects
from llmserve.router import metrics
from llmserve.router.token_stream import TokenStream
from llmserve.v1 import common_pb2, events_pb2

log = structlog.get_logger()

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


class GenerationService:
    def __init__(self, nc: NATS, subjects: Subjects, timeouts: StreamTimeouts) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeouts = timeouts

    def check_size(self, job: events_pb2.Job) -> bytes:
        data = job.SerializeToString()
        limit = self._nc.max_payload - _PAYLOAD_HEADROOM
        if len(data) > limit:
            raise ServiceError.invalid(f"the request is {len(data)} bytes; this cluster accepts at most {limit}")
        return data

    async def stream(self, job: events_pb2.Job, api: str = "grpc") -> AsyncIterator[events_pb2.TokenChunk]:
        """Yields the job's chunks in order, the final one last. Error finals become ServiceError."""
        data = self.check_size(job)
        tokens = await TokenStream(self._nc, job.reply_subject).open()
        finished = False
        outcome = "cancelled"
        started = last = time.monotonic()
        metrics.IN_FLIGHT.inc()
        try:
            reply = await self._submit(data)
            if reply.error_code != events_pb2.ERROR_CODE_UNSPECIFIED:
                finished = True  # nothing was queued, nothing to cancel
                raise ServiceError(reply.error_code, reply.error_message, reply.retry_after_s or None)
            timeout = self._first_chunk_timeout(job)
            while True:
                chunk = await tokens.next(timeout)
                now = time.monotonic()
                if tokens.next_seq == 1:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - started)
                    log.info("first_chunk", ttft_s=round(now - started, 4), worker=chunk.worker_id)
                else:
                    metrics.INTER_TOKEN_LATENCY.observe(now - last)
                last = now
                timeout = self._timeouts.stall_s
                if chunk.final:
                    finished = True
                    if chunk.finish_reason == common_pb2.FINISH_REASON_ERROR:
                        raise ServiceError(chunk.error_code or events_pb2.ERROR_CODE_INTERNAL, chunk.error_message)
                    outcome = "ok"
                    metrics.GENERATED_TOKENS.inc(chunk.usage.completion_tokens)
                    metrics.REQUEST_DURATION.observe(now - started)
                    yield chunk
                    return
                yield chunk
        except ServiceError as exc:
            outcome = events_pb2.ErrorCode.Name(exc.code).removeprefix("ERROR_CODE_").lower()
            raise
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(api=api, outcome=outcome).inc()
            await tokens.close()
            if not finished:
                # Client gone, deadline hit or stream stalled: the worker must stop spending compute on it.
                await asyncio.shield(self._cancel(job.request_id, "client_gone"))

    def _first_chunk_timeout(self, job: events_pb2.Job) -> float:
        if job.deadline:
            return max(0.001, min(self._timeouts.first_chunk_s, job.deadline - time.time()))
        return self._timeouts.first_chunk_s

    async def _submit(self, data: bytes) -> events_pb2.SubmitReply:
        try:
            msg = await self._nc.request(self._subjects.submit, data, timeout=self._timeouts.submit_s)
        except NoRespondersError:
            raise ServiceError.unavailable("no scheduler is running") from None
        except (TimeoutError, NatsTimeoutError):
            raise ServiceError.unavailable("the scheduler did not answer in time") from None
        return events_pb2.SubmitReply.FromString(msg.data)

    async def _cancel(self, request_id: str, reason: str) -> None:
        try:
            await self._nc.publish(
                self._subjects.cancel(request_id),
                events_pb2.Cancel(request_id=request_id, reason=reason).SerializeToString(),
            )
            log.info("request_cancelled", request_id=request_id, reason=reason)
        except Exception as exc:
            log.warning("cancel_failed", request_id=request_id, error=str(exc))

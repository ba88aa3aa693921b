"""The wire format of a job's answer: the TokenChunks a worker publishes on the job's reply subject.

seq 0 says "taken by this worker" (no tokens); every engine output becomes the next seq; the last
chunk is final, with the finish reason and usage, or an error code and message; a `handed_back`
chunk tells the router to resume the request elsewhere; an `on_trial` chunk (no tokens) says a
suspect job is about to run (see Job.crashes). Every chunk is also noted in the worker's AttachBook,
for routers that re-attach a client to the request. Every chunk names the worker, the model
version and the attempt, so routers can drop chunks of an attempt they gave up on.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from llmserve.model_worker.attach_book import AttachBook
from llmserve.model_worker.engine import EngineOutput
from llmserve.v1 import common_pb2, events_pb2


class ChunkPublisher:
    def __init__(self, nc: NATS, instance_id: str, model_version: int, book: AttachBook | None = None) -> None:
        self._nc = nc
        self._instance_id = instance_id
        self._model_version = model_version
        self.book = book if book is not None else AttachBook()

    def _chunk(self, job: events_pb2.Job, seq: int) -> events_pb2.TokenChunk:
        return events_pb2.TokenChunk(
            request_id=job.request_id, seq=seq, worker_id=self._instance_id, model_version=self._model_version, attempt=job.attempt
        )

    async def _publish(self, job: events_pb2.Job, chunk: events_pb2.TokenChunk) -> None:
        self.book.record(job, chunk)
        await self._nc.publish(job.reply_subject, chunk.SerializeToString())

    async def started(self, job: events_pb2.Job) -> None:
        await self._publish(job, self._chunk(job, 0))

    async def on_trial(self, job: events_pb2.Job, seq: int, flush_timeout_s: float = 2.0) -> None:
        """Says a suspect job starts now, and waits until NATS has it: if this worker dies while the
        job runs, its router must know the job was on trial."""
        chunk = self._chunk(job, seq)
        chunk.on_trial = True
        await self._publish(job, chunk)
        await self.flush(flush_timeout_s)

    async def flush(self, timeout_s: float = 2.0) -> None:
        try:
            await self._nc.flush(timeout=timeout_s)
        except Exception:  # NATS reconnecting: the chunk goes out with the reconnection
            pass

    async def output(self, job: events_pb2.Job, seq: int, out: EngineOutput) -> None:
        chunk = self._chunk(job, seq)
        chunk.text = out.text
        chunk.token_ids.extend(out.token_ids)
        chunk.logprobs.extend(out.logprobs)
        chunk.final = out.finished
        chunk.finish_reason = out.finish_reason
        if out.finished:
            chunk.usage.CopyFrom(usage(out.prompt_tokens, out.completion_tokens))
            if out.finish_reason == common_pb2.FINISH_REASON_ERROR:
                chunk.error_code = events_pb2.ERROR_CODE_INTERNAL
                chunk.error_message = out.error
        await self._publish(job, chunk)

    async def handed_back(self, job: events_pb2.Job, seq: int) -> None:
        chunk = self._chunk(job, seq)
        chunk.handed_back = True
        await self._publish(job, chunk)

    async def error(self, job: events_pb2.Job, seq: int, code: int, message: str) -> None:
        chunk = self._chunk(job, seq)
        chunk.final = True
        chunk.finish_reason = common_pb2.FINISH_REASON_ERROR
        chunk.error_code = code
        chunk.error_message = message
        await self._publish(job, chunk)


def usage(prompt: int, completion: int) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

"""Synthetic probes: a fixed prompt sent to every live model version on a schedule, answer checked.

A probe goes through the same path as client traffic (scheduler, JetStream, a worker, tokens back over
NATS), so it fails when any part of that path is broken for the version, not only when a process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS

from llmserve.common.errors import ServiceError
from llmserve.common.job_client import JobClient, StreamStalled, WorkerLost
from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import Subjects
from llmserve.monitor.alerts import Alerter
from llmserve.v1 import common_pb2, events_pb2

log = structlog.get_logger()


@dataclass(frozen=True)
class ProbeSettings:
    # Seconds between two rounds of probes; 0 turns probing off.
    interval_s: float = 60.0
    # The question asked.
    prompt: str = "What is the capital of France?"
    # A probe passes when the answer contains this text (case-insensitive); empty: any non-empty answer.
    expect: str = "Paris"
    # Longest time a probe may take.
    timeout_s: float = 30.0
    # Tokens the answer may have.
    max_tokens: int = 24


@dataclass
class ProbeResult:
    model: str
    version: int
    ok: bool
    latency_s: float
    detail: str
    at: float


class Prober:
    def __init__(self, nc: NATS, subjects: Subjects, table: LivenessTable, alerter: Alerter, settings: ProbeSettings) -> None:
        self._jobs = JobClient(nc, subjects, submit_timeout_s=5.0)
        self._subjects = subjects
        self._table = table
        self._alerter = alerter
        self.settings = settings
        self.results: dict[str, ProbeResult] = {}

    async def run(self, stop: asyncio.Event) -> None:
        if self.settings.interval_s <= 0:
            return
        while not stop.is_set():
            await self.probe_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.interval_s)

    async def probe_all(self) -> list[ProbeResult]:
        versions = sorted({(b.model, b.model_version) for b in self._table.live_workers()})
        results = await asyncio.gather(*(self.probe(model, version) for model, version in versions))
        for result in results:
            self.results[f"{result.model} v{result.version}"] = result
            if result.ok:
                log.info("probe_passed", model=result.model, version=result.version, latency_s=round(result.latency_s, 3))
            else:
                await self._alerter.raise_alert(
                    "probe_failed", f"probe of {result.model} v{result.version} failed: {result.detail}",
                    model=result.model, version=result.version, latency_s=round(result.latency_s, 3),
                )
        return list(results)

    async def probe(self, model: str, version: int) -> ProbeResult:
        s = self.settings
        request_id = "probe-" + uuid.uuid4().hex[:16]
        job = events_pb2.Job(
            request_id=request_id,
            model=model,
            model_version=version,
            messages=events_pb2.JobMessages(messages=[common_pb2.ChatMessage(role="user", content=s.prompt)]),
            sampling=common_pb2.SamplingParams(max_tokens=s.max_tokens),
            priority=common_pb2.PRIORITY_CRITICAL,
            reply_subject=self._subjects.tokens(request_id),
            submitted_at=time.time(),
            deadline=time.time() + s.timeout_s,
            tenant="llmserve-probe",
        )
        started = time.monotonic()
        tokens = await self._jobs.stream(job)
        finished = False
        try:
            try:
                await self._jobs.submit(job.SerializeToString())
            except ServiceError as exc:
                return self._result(model, version, False, started, f"not queued: {exc.message}")
            text = ""
            while True:
                remaining = s.timeout_s - (time.monotonic() - started)
                chunk = await tokens.next(max(0.01, remaining))
                text += chunk.text
                if chunk.final:
                    finished = True
                    break
            if chunk.finish_reason == common_pb2.FINISH_REASON_ERROR:
                return self._result(model, version, False, started, f"error: {chunk.error_message}")
            if not text.strip():
                return self._result(model, version, False, started, "empty answer")
            if s.expect and s.expect.lower() not in text.lower():
                return self._result(model, version, False, started, f"answer lacks {s.expect!r}: {text[:80]!r}")
            return self._result(model, version, True, started, text[:80])
        except StreamStalled:
            return self._result(model, version, False, started, f"no answer within {s.timeout_s:.0f} s")
        except WorkerLost as exc:
            # A probe is not migrated: a worker lost mid-answer is what it exists to notice.
            return self._result(model, version, False, started, str(exc))
        except Exception as exc:
            return self._result(model, version, False, started, f"{type(exc).__name__}: {exc}")
        finally:
            await tokens.close()
            if not finished:
                await self._jobs.cancel(request_id, "probe_abandoned", job.attempt)
            await self._jobs.done(job)

    def _result(self, model: str, version: int, ok: bool, started: float, detail: str) -> ProbeResult:
        return ProbeResult(model, version, ok, time.monotonic() - started, detail, time.time())

"""What the caller's API key decides about its request: the tenant, the priority cap, the rate limits.

With auth off (no Principal), the tenant is the request's x-tenant header and nothing is capped here
(the scheduler still applies the tenant's own limits). With auth on, x-tenant is ignored: the key's
tenant, the key's highest priority and the key's per-minute limits apply, whatever the request says.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from llmserve.common.auth import Principal
from llmserve.common.errors import ServiceError
from llmserve.common.rate_limits import RateLimiter
from llmserve.router import metrics
from llmserve.router.validation import JobFactory
from llmserve.v1 import common_pb2, events_pb2, inference_pb2


class CallerGate:
    def __init__(self, make_job: JobFactory, limiter: RateLimiter) -> None:
        self._make_job = make_job
        self._limiter = limiter

    async def job(
        self, request: inference_pb2.GenerateRequest, principal: Principal | None, deadline: float = 0.0, tenant_header: str = "",
        admit: bool = True,
    ) -> events_pb2.Job:
        """The validated job, admitted by the key's limits (RESOURCE_EXHAUSTED with Retry-After when over
        one); without `admit` (a re-attach to a request admitted before) the limits are not asked."""
        if principal is None:
            return self._make_job(request, deadline=deadline, tenant=tenant_header)
        job = self._make_job(request, deadline=deadline, tenant=principal.tenant)
        requested = job.priority or common_pb2.PRIORITY_NORMAL
        job.priority = min(requested, principal.max_priority)
        if not admit:
            return job
        try:
            await self._limiter.admit(principal.key_id, principal.tenant, principal.requests_per_minute, principal.tokens_per_minute)
        except ServiceError as exc:
            metrics.RATE_LIMITED.labels(tenant=metrics.tenant_label(principal.tenant), limit=exc.reason).inc()
            raise
        return job

    def choices(self, job: events_pb2.Job, n: int) -> list[events_pb2.Job]:
        """One job per choice of an n > 1 request (see JobFactory.choices); admitted as one request."""
        return self._make_job.choices(job, n)

    async def metered(
        self, chunks: AsyncGenerator[events_pb2.TokenChunk, None], principal: Principal | None
    ) -> AsyncIterator[events_pb2.TokenChunk]:
        """The chunks, unchanged; the request's prompt and completion tokens are charged to the key's
        tokens-per-minute budget when its final chunk passes (a request that ends without one is not charged)."""
        try:
            async for chunk in chunks:
                if chunk.final and principal is not None and principal.tokens_per_minute:
                    used = chunk.usage.prompt_tokens + chunk.usage.completion_tokens
                    await self._limiter.charge_tokens(principal.key_id, principal.tokens_per_minute, used)
                yield chunk
        finally:
            # Closed early (the client left): close the stream now, which cancels the job on its worker.
            await chunks.aclose()

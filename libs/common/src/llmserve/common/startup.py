"""The start-up contract every service keeps (docs/ARCHITECTURE.md, "Starting and stopping").

- While NATS or Redis cannot be reached, a service stays up and not ready, retries with capped,
  jittered exponential backoff, and logs one line when it starts waiting (`waiting_for_nats`) and one
  when it got through (`nats_connected`) — never one per attempt, never a traceback.
- `LLMSERVE_STARTUP_TIMEOUT_S` (optional) makes it give up instead: a clear `startup_timeout` line
  and exit code 1, for supervisors that prefer restarting.
- The first SIGTERM or SIGINT ends any wait at once (`ShutdownRequested`): the process exits 0.

`Readiness` is what the health endpoints report: not ready while anything named in it blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

log = structlog.get_logger()
T = TypeVar("T")


class ShutdownRequested(Exception):  # noqa: N818 - a request, not an error
    """The first SIGTERM or SIGINT arrived while the service was still starting (or waiting)."""


class StartupTimeout(Exception):
    """A dependency stayed unreachable for longer than LLMSERVE_STARTUP_TIMEOUT_S."""


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: first_s doubling up to max_s, each shortened by up to a quarter at random
    so that a fleet restarted together does not knock in step. The cap bounds how long a service takes
    to notice a dependency that came back (max_s plus one attempt)."""

    first_s: float = 0.5
    max_s: float = 4.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2 ** min(attempt, 16)) * random.uniform(0.75, 1.0)


class Readiness:
    """Whether this process can do its work now, and if not, why.

    Anything may block readiness under a name (`nats`, `redis`, `starting`, `model`, ...) and clear it
    again; the process is ready while nothing blocks. Each change of the overall state is logged once
    and handed to the listeners (gRPC health, the heartbeat's ready flag).
    """

    def __init__(self) -> None:
        self._blocked: dict[str, str] = {"starting": "starting up"}
        self._ready = False
        self.listeners: list[Callable[[bool], None]] = []

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        """What blocks readiness ("" when ready)."""
        return "; ".join(f"{name}: {why}" for name, why in self._blocked.items())

    def probe(self) -> tuple[int, dict]:
        """The answer of a /readyz endpoint: 200 when ready, else 503 with the reason."""
        return (200 if self._ready else 503), {"ready": self._ready, "reason": self.reason}

    def block(self, name: str, why: str) -> None:
        self._blocked[name] = why
        self._changed()

    def clear(self, name: str) -> None:
        if self._blocked.pop(name, None) is not None:
            self._changed()

    def _changed(self) -> None:
        ready = not self._blocked
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.info("service_ready")
        else:
            log.warning("service_not_ready", reason=self.reason)
        for listener in self.listeners:
            listener(ready)


class StartupGate:
    """Waits for dependencies under the contract above; every wait ends at the first signal."""

    def __init__(self, stop: asyncio.Event, readiness: Readiness, timeout_s: float = 0.0, backoff: Backoff | None = None) -> None:
        self._stop = stop
        self._readiness = readiness
        self._timeout_s = timeout_s
        # The timeout counts from process start, over every dependency together.
        self._deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        self._backoff = backoff or Backoff()

    async def unless_stopped(self, work: Awaitable[T]) -> T:
        """The result of `work`, or ShutdownRequested (with `work` cancelled) when the stop signal comes first."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise ShutdownRequested
        return task.result()

    async def until_reachable(self, name: str, where: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Calls `attempt` until it succeeds; readiness is blocked under `name` meanwhile."""
        self._readiness.block(name, f"waiting for {where}")
        started = time.monotonic()
        failures = 0
        while True:
            try:
                result = await self.unless_stopped(attempt())
            except ShutdownRequested:
                raise
            except Exception as exc:  # noqa: BLE001 - clients raise many unrelated types for "not reachable"
                if failures == 0:
                    log.warning(f"waiting_for_{name}", at=where, error=_one_line(exc))
                delay = self._backoff.delay(failures)
                failures += 1
                if self._deadline is not None and time.monotonic() + delay > self._deadline:
                    message = (
                        f"{name} at {where} was not reachable within {self._timeout_s:g} s "
                        f"(LLMSERVE_STARTUP_TIMEOUT_S): {_one_line(exc)}"
                    )
                    raise StartupTimeout(message) from None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    raise ShutdownRequested from None
                continue
            log.info(f"{name}_connected", at=where, waited_s=round(time.monotonic() - started, 2), attempts=failures + 1)
            self._readiness.clear(name)
            return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

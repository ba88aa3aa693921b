"""NATS connections and the JetStream work-queue stream every service agrees on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from llmserve.common.subjects import Subjects

log = structlog.get_logger()


async def connect_nats(
    url: str, name: str, wait_s: float = 30.0, on_reconnect: list[Callable[[], None]] | None = None
) -> NATS:
    """Connects, retrying for up to wait_s so services may start before the server; reconnects forever after.

    `on_reconnect` is a list the caller may keep adding to; each function in it runs after every reconnect.
    """

    async def _error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    async def _disconnected() -> None:
        log.warning("nats_disconnected")

    async def _reconnected() -> None:
        log.info("nats_reconnected")
        for hook in on_reconnect or ():
            hook()

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await nats.connect(
                url,
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_error,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
            )
        except Exception as exc:  # nats raises several unrelated types for "not reachable"
            if time.monotonic() >= deadline:
                raise ConnectionError(f"cannot reach NATS at {url}: {exc}") from exc
            log.info("nats_waiting", url=url, error=str(exc))
            await asyncio.sleep(0.5)


def jobs_stream_config(subjects: Subjects, max_queued: int) -> StreamConfig:
    """The job queue: a message is removed once a worker acks it (work-queue retention).

    discard=new makes a full queue refuse publishes, which is the scheduler's hard bound on memory.
    Duplicate submissions of one request id within the window are dropped by JetStream itself.
    """
    return StreamConfig(
        name=subjects.jobs_stream,
        subjects=[subjects.jobs_all],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=max_queued,
        duplicate_window=120.0,
    )


async def ensure_jobs_stream(nc: NATS, subjects: Subjects, max_queued: int) -> None:
    js = nc.jetstream()
    config = jobs_stream_config(subjects, max_queued)
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other limits: bring it to ours (several schedulers agree on the same values).
        await js.update_stream(config)

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


# Bytes one model's queue may hold, whatever the job count: a burst of huge prompts stays bounded too.
DEFAULT_QUEUE_MAX_BYTES = 1 << 30


def jobs_stream_config(subjects: Subjects, model: str, max_queued: int, msg_ttl: bool = True) -> StreamConfig:
    """One model's job queue: a message is removed once a worker acks it (work-queue retention).

    discard=new makes a full queue refuse publishes, which is the scheduler's hard bound per model.
    Duplicate submissions of one request id within the window are dropped by JetStream itself, and
    a job published with a Nats-TTL header (its deadline) is deleted by JetStream when it expires.
    """
    return StreamConfig(
        name=subjects.jobs_stream(model),
        subjects=[subjects.jobs_model(model)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=max_queued,
        max_bytes=DEFAULT_QUEUE_MAX_BYTES,
        duplicate_window=120.0,
        allow_msg_ttl=msg_ttl or None,
    )


async def ensure_jobs_stream(nc: NATS, subjects: Subjects, model: str, max_queued: int) -> bool:
    """Creates (or brings to these limits) one model's queue. Returns whether per-message TTLs work.

    Several schedulers and workers call this with the same values; the last one to update wins, so
    every scheduler must be configured alike. Servers older than 2.11 know no per-message TTL: the
    queue is made without it, and expired jobs are dropped when a worker takes them instead.
    """
    js = nc.jetstream()
    for msg_ttl in (True, False):
        config = jobs_stream_config(subjects, model, max_queued, msg_ttl)
        try:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                # Exists with other limits: bring it to ours.
                await js.update_stream(config)
            return msg_ttl
        except BadRequestError as exc:
            if not msg_ttl:
                raise
            log.warning("jobs_stream_without_ttl", model=model, error=str(exc))
    return False


# JetStream's error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058

"""NATS connections and the JetStream work-queue stream every service agrees on."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from llmserve.common.subjects import Subjects

log = structlog.get_logger()


def server_urls(url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222`: the seed servers of a cluster; one URL for one server."""
    return [part.strip() for part in url.split(",") if part.strip()]


class NatsEvents:
    """The client's callbacks: one log line per change of connection state, then the reconnect hooks.

    nats-py reports every failed reconnect attempt through the error callback (twice a second while
    a server is away); only the first error after a state change is logged. Before the first connect
    the caller's backoff loop speaks instead (`waiting_for_nats`), and a deliberate close is not news.
    """

    def __init__(self, on_reconnect: list[Callable[[], None]], on_state: Callable[[bool], None]) -> None:
        self._on_reconnect = on_reconnect
        self._on_state = on_state
        self._quiet = True
        self.closing = False

    async def error(self, exc: Exception) -> None:
        if not self._quiet:
            self._quiet = True
            log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def disconnected(self) -> None:
        if self.closing:
            return
        log.warning("nats_disconnected")
        self._on_state(False)

    async def reconnected(self) -> None:
        log.info("nats_reconnected")
        self._quiet = False
        self._on_state(True)
        for hook in self._on_reconnect:
            hook()

    def connected(self) -> None:
        self._quiet = False


async def connect_once(nc: NATS, url: str, name: str, events: NatsEvents) -> None:
    """One bounded attempt to connect `nc` (each server tried twice, 0.5 s apart); raises when none answers.

    Once connected the client reconnects forever. nats-py applies `max_reconnect_attempts` to the first
    connect too, where -1 would make connect() itself retry forever with no way to give up or to stop
    on a signal; the caller's backoff loop (StartupGate) does the first connect, and the unlimited
    reconnect policy is switched on once it succeeded (nats-py reads these options at every reconnect).
    """
    await nc.connect(
        server_urls(url),
        name=name,
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        error_cb=events.error,
        disconnected_cb=events.disconnected,
        reconnected_cb=events.reconnected,
    )
    nc.options.update(allow_reconnect=True, max_reconnect_attempts=-1)
    events.connected()


def usable(nc: NATS) -> bool:
    """Connected, or reconnecting after having been connected (publishes are buffered meanwhile)."""
    return nc.is_connected or nc.is_reconnecting


# Seconds JetStream remembers a job's message id: a resubmission inside it is dropped. The
# scheduler remembers ended requests at least this long (tenants.DONE_MEMORY_S).
JOBS_DUPLICATE_WINDOW_S = 120.0

# Bytes one model's queue may hold, whatever the job count: a burst of huge prompts stays bounded too.
DEFAULT_QUEUE_MAX_BYTES = 1 << 30


def jobs_stream_config(subjects: Subjects, model: str, max_queued: int, msg_ttl: bool = True, replicas: int = 1) -> StreamConfig:
    """One model's job queue: a message is removed once a worker acks it (work-queue retention).

    discard=new makes a full queue refuse publishes, which is the scheduler's hard bound per model.
    Duplicate submissions of one request id within the window are dropped by JetStream itself, and
    a job published with a Nats-TTL header (its deadline) is deleted by JetStream when it expires.
    On a NATS cluster the stream has `replicas` copies (its consumers as many), so a queue and its
    acknowledged jobs survive the loss of a server while a majority of the copies lives.
    """
    return StreamConfig(
        name=subjects.jobs_stream(model),
        subjects=[subjects.jobs_model(model)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=max_queued,
        max_bytes=DEFAULT_QUEUE_MAX_BYTES,
        duplicate_window=JOBS_DUPLICATE_WINDOW_S,
        allow_msg_ttl=msg_ttl or None,
        num_replicas=replicas,
    )


async def ensure_jobs_stream(nc: NATS, subjects: Subjects, model: str, max_queued: int, replicas: int = 1, timeout_s: float = 5.0) -> bool:
    """Creates (or brings to these limits) one model's queue. Returns whether per-message TTLs work.

    Several schedulers and workers call this with the same values; the last one to update wins, so
    every scheduler must be configured alike. Servers older than 2.11 know no per-message TTL: the
    queue is made without it, and expired jobs are dropped when a worker takes them instead.
    """
    js = nc.jetstream(timeout=timeout_s)
    for msg_ttl in (True, False):
        config = jobs_stream_config(subjects, model, max_queued, msg_ttl, replicas)
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

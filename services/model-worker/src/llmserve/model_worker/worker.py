"""The worker process's NATS side: heartbeats, cancels, and following the registry from version to version.

A worker serves the version its alias (`stable` by default) names. When the registry changes the
alias (announced on NATS, and re-read every few seconds in case an announcement was missed), the
worker verifies and loads the new version, starts taking its jobs, and then winds the old one down:
the old version keeps taking its already-queued jobs and finishing its running ones, and is unloaded
once it has none. No request is dropped. An artifact that fails verification or loading is refused
(logged, announced as ModelRefused) and the current version keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmserve.common.catalog import ModelCatalog
from llmserve.common.heartbeat import HeartbeatPublisher
from llmserve.common.subjects import Subjects
from llmserve.model_worker import metrics
from llmserve.model_worker.engine import EngineStats
from llmserve.model_worker.gpu_stats import GpuStats
from llmserve.model_worker.version_server import VersionServer
from llmserve.v1 import events_pb2, registry_pb2

log = structlog.get_logger()

# Seconds between reads of the alias when no announcement arrives.
ALIAS_POLL_S = 5.0
# New prefix keys are announced in a heartbeat of their own, at most this often.
_ANNOUNCE_EVERY_S = 0.2

# Loads (verifying its checksum) and starts the engine of a version; raises when it cannot.
VersionOpener = Callable[[registry_pb2.ModelVersion], Awaitable[VersionServer]]


class ModelWorker:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        first: VersionServer,
        instance_id: str,
        heartbeat_interval_s: float,
        catalog: ModelCatalog | None = None,
        open_version: VersionOpener | None = None,
        alias: str = "",
        wind_down_grace_s: float = 30.0,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self.current = first
        self._winding_down: dict[int, VersionServer] = {}
        self.instance_id = instance_id
        self._heartbeat_interval_s = heartbeat_interval_s
        self._catalog = catalog
        self._open_version = open_version
        # Empty: pinned to one version, never follows the registry.
        self._alias = alias
        self._wind_down_grace_s = wind_down_grace_s
        self._refused: set[tuple[int, str]] = set()
        self._changed = asyncio.Event()
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []
        self._swap_lock = asyncio.Lock()
        self._draining = False
        self._gpu = GpuStats(first.device)
        # Read at every scrape, so /metrics shows the load of that moment, not of the last beat.
        metrics.SLOTS_TOTAL.set_function(lambda: self.load().slots_total)
        metrics.SLOTS_BUSY.set_function(lambda: self.load().slots_busy)
        metrics.KV_RESERVED.set_function(lambda: self.load().kv_reserved)
        metrics.KV_USAGE.set_function(lambda: self.load().kv_usage)
        metrics.PREFIX_CACHE_BYTES.set_function(self._prefix_cache_bytes)
        self.heartbeat = HeartbeatPublisher(
            nc, subjects, instance_id, events_pb2.INSTANCE_KIND_WORKER, heartbeat_interval_s, self._fill_beat
        )
        # New prefix keys go out in a heartbeat of their own, at most every _ANNOUNCE_EVERY_S.
        self._announce_task: asyncio.Task[None] | None = None
        self._announced_at = 0.0
        first.on_announce = self._announce_soon

    def _announce_soon(self) -> None:
        if self._announce_task is None or self._announce_task.done():
            self._announce_task = asyncio.create_task(self._announce(), name="announce-prefixes")

    async def _announce(self) -> None:
        wait = self._announced_at + _ANNOUNCE_EVERY_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._announced_at = time.monotonic()
        await self.heartbeat.beat_once()

    @property
    def model(self) -> str:
        return self.current.record.name

    def _servers(self) -> list[VersionServer]:
        return [self.current, *self._winding_down.values()]

    def _prefix_cache_bytes(self) -> int:
        caches = [getattr(server.engine, "prefix_cache", None) for server in self._servers() if server.engine is not None]
        return sum(cache.nbytes for cache in caches if cache is not None)

    def load(self) -> EngineStats:
        """The engines' load, all versions together."""
        total = busy = kv_reserved = kv_capacity = 0
        for server in self._servers():
            if server.engine is None:
                continue  # a wound-down version between drain and close
            stats = server.engine.stats()
            total += stats.slots_total
            busy += stats.slots_busy
            kv_reserved += stats.kv_reserved
            kv_capacity += stats.kv_capacity
        return EngineStats(total, busy, kv_reserved, kv_capacity)

    def _fill_beat(self, beat: events_pb2.Heartbeat) -> None:
        load = self.load()
        total, busy = load.slots_total, load.slots_busy
        beat.model = self.model
        beat.model_version = self.current.version
        beat.numerics = self.current.numerics
        metrics.set_numerics(self.current.numerics)
        beat.draining_versions.extend(sorted(self._winding_down))
        beat.slots_total = total
        beat.slots_busy = busy
        beat.generated_tokens_total = metrics.generated_tokens_total()
        beat.ready = not self._draining
        if beat.ready:
            beat.prefix_keys.extend(self.current.announcer.held())
        self._gpu.fill(beat)

    async def start(self) -> None:
        async def _cancel(msg: Msg) -> None:
            request = events_pb2.Cancel.FromString(msg.data)
            for server in self._servers():
                server.cancel(request)

        async def _attach(msg: Msg) -> None:
            try:
                request_id = events_pb2.AttachRequest.FromString(msg.data).request_id
            except Exception:
                return
            # Every worker hears the question; only the one holding the request answers.
            found = self.current.book.reply(request_id)
            if found is not None and msg.reply:
                await msg.respond(found.SerializeToString())

        self._subs.append(await self._nc.subscribe(self._subjects.cancel_all, cb=_cancel))
        self._subs.append(await self._nc.subscribe(self._subjects.attach, cb=_attach))
        await self.current.start()
        if self._alias and self._catalog is not None and self._open_version is not None:

            async def _change(msg: Msg) -> None:
                try:
                    change = events_pb2.RegistryChange.FromString(msg.data)
                except Exception:
                    return
                if change.model == self.model:
                    self._changed.set()

            self._subs.append(await self._nc.subscribe(self._subjects.registry_changes, cb=_change))
            self._tasks.append(asyncio.create_task(self._follow(), name="follow-registry"))
        self.heartbeat.start()
        await self.heartbeat.beat_once()  # announce readiness now rather than one interval later
        log.info("worker_ready", model=self.model, version=self.current.version, follows=self._alias or "(pinned)")

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stops taking jobs, lets running ones finish within grace_s (handing back the rest), then stops."""
        self._draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.heartbeat.beat_once()
        servers = self._servers()
        await asyncio.gather(*(server.drain(grace_s) for server in servers))
        for sub in self._subs:
            await sub.unsubscribe()
        if self._announce_task is not None:
            self._announce_task.cancel()
        await self.heartbeat.stop()
        for server in servers:
            await server.close()

    # -- following the registry ----------------------------------------------------------------
    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), ALIAS_POLL_S)
            except TimeoutError:
                pass
            self._changed.clear()
            try:
                record = await self._catalog.get_by_alias(self.model, self._alias)
            except Exception as exc:  # Redis away, or the alias removed: keep serving what runs
                log.debug("alias_unreadable", error=str(exc))
                continue
            if record.version != self.current.version and (record.version, record.sha256) not in self._refused:
                await self.swap_to(record)

    async def swap_to(self, record: registry_pb2.ModelVersion) -> bool:
        """Loads `record`, serves it, and winds down the version served so far; False when it was refused."""
        async with self._swap_lock:
            if self._draining or record.version == self.current.version:
                return False
            log.info("version_swap_started", model=record.name, version=record.version, serving=self.current.version)
            try:
                server = await self._open_version(record)
                await server.start()
            except Exception as exc:
                self._refused.add((record.version, record.sha256))
                reason = f"{type(exc).__name__}: {exc}"
                log.error("model_refused", model=record.name, version=record.version, reason=reason, serving=self.current.version)
                refused = events_pb2.ModelRefused(
                    instance_id=self.instance_id, model=record.name, version=record.version, reason=reason, serving_version=self.current.version
                )
                await self._nc.publish(self._subjects.model_refused, refused.SerializeToString())
                return False
            old = self.current
            server.on_announce = self._announce_soon
            self.current = server
            self._winding_down[old.version] = old
            await self.heartbeat.beat_once()  # schedulers see the new version now
            log.info("version_swapped", model=record.name, version=record.version, winding_down=old.version)
            # Earlier swaps' wind-down tasks that ended are dropped, so a long-lived worker keeps no list of them.
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(self._wind_down(old), name=f"wind-down-v{old.version}"))
            return True

    async def _wind_down(self, old: VersionServer) -> None:
        # Jobs admitted for the old version before the schedulers saw the move still arrive for a
        # heartbeat or two: keep taking them for two intervals at least.
        await old.wind_down(self._wind_down_grace_s, settle_s=2 * self._heartbeat_interval_s)
        if self._winding_down.pop(old.version, None) is not None:
            await old.close()
        log.info("version_unloaded", model=self.model, serving=self.current.version)
        await self.heartbeat.beat_once()

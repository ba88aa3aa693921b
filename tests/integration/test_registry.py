"""The registry over a real Redis: atomic alias changes under concurrency, audit, backups, a Redis that
restarts with or without its data, and the gRPC service in front of it."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from llmserve.cli import infra
from llmserve.common.auth import Authenticator
from llmserve.common.catalog import CatalogBackup, ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.common.grpc_server import ErrorInterceptor
from llmserve.common.keys import RedisKeys
from llmserve.registry.grpc_api import RegistryServicer
from llmserve.registry.guard import RegistryGuard, RegistryLost
from llmserve.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def registry_addr(catalog, redis_client, keys, tmp_path, redis_srv):
    """The Registry gRPC service in this process (auth off), on a free port."""
    store = tmp_path / "store"
    guard = RegistryGuard(catalog, store, redis_srv.url, keys.prefix)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    authenticator = Authenticator(redis_client, keys, required=False)
    servicer = RegistryServicer(catalog, CatalogBackup(redis_client, keys, catalog), guard, store, redis_client, keys, authenticator)
    registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def registry_stub(registry_addr):
    channel = grpc.aio.insecure_channel(registry_addr)
    yield registry_pb2_grpc.RegistryStub(channel)
    await channel.close()


async def test_fifty_concurrent_promotes_and_rollbacks_leave_a_consistent_record(registry_stub, catalog):
    # Five versions published at once: numbers unique and increasing.
    published = await asyncio.gather(*(catalog.publish("m", f"m/{i}", f"{i:064x}", "test") for i in range(5)))
    assert sorted(v.version for v in published) == [1, 2, 3, 4, 5]

    rng = random.Random(7)

    async def one(i: int) -> registry_pb2.AliasChange | None:
        try:
            if rng.random() < 0.6:
                return await registry_stub.Promote(registry_pb2.PromoteRequest(name="m", version=rng.randint(1, 5), actor=f"t{i}"))
            return await registry_stub.Rollback(registry_pb2.RollbackRequest(name="m", actor=f"t{i}"))
        except grpc.aio.AioRpcError as exc:
            # The only acceptable refusal: nothing left to roll back to.
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return None

    results = await asyncio.gather(*(one(i) for i in range(50)))
    succeeded = [r for r in results if r is not None]
    assert succeeded, "some changes must succeed"
    audit = [e for e in (await registry_stub.ListAudit(registry_pb2.ListAuditRequest(name="m", limit=1000))).entries
             if e.action in ("promote", "rollback")]
    # One audit entry per successful call, and they are the same changes.
    assert sorted(e.id for e in audit) == sorted(r.entry.id for r in succeeded)
    # The alias equals the last change recorded, and never names a missing version.
    stable = await registry_stub.GetVersion(registry_pb2.GetVersionRequest(name="m", alias="stable"))
    assert stable.version == audit[-1].version
    versions = {v.version for v in (await registry_stub.ListVersions(registry_pb2.ListVersionsRequest(name="m"))).versions}
    assert versions == {1, 2, 3, 4, 5}
    assert all(e.version in versions for e in audit)
    ids = [e.id for e in audit]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_retire_canary_and_rollback_rules(catalog):
    for i in range(3):
        await catalog.publish("m", f"m/{i}", f"{i:064x}", "test")
    await catalog.promote("m", 2)
    await catalog.promote("m", 3)
    with pytest.raises(ServiceError) as err:
        await catalog.retire("m", 3)  # the stable version
    assert err.value.code == events_pb2.ERROR_CODE_FAILED_PRECONDITION
    await catalog.retire("m", 2)
    # Rollback skips the retired version 2 and lands on 1.
    await catalog.rollback("m")
    assert await catalog.resolve("m") == 1
    with pytest.raises(ServiceError):
        await catalog.set_canary("m", 2, 20)  # retired
    with pytest.raises(ServiceError):
        await catalog.set_canary("m", 1, 20)  # already stable
    with pytest.raises(ServiceError):
        await catalog.set_canary("m", 3, 101)
    await catalog.set_canary("m", 3, 30)
    record = await catalog.get("m", 3)
    assert "canary" in record.aliases and record.canary_weight == 30
    # Promoting the canary ends the canary.
    await catalog.promote("m", 3)
    assert await catalog.canary("m") is None
    with pytest.raises(ServiceError) as err:
        await catalog.promote("m", 9)
    assert err.value.code == events_pb2.ERROR_CODE_NOT_FOUND


async def test_export_import_round_trip_and_refusal(catalog, redis_client, keys):
    for i in range(3):
        await catalog.publish("m", f"m/{i}", f"{i:064x}", "test")
    await catalog.promote("m", 2)
    await catalog.set_canary("m", 3, 25)
    snapshot = await CatalogBackup(redis_client, keys, catalog).export()
    other_keys = RedisKeys(keys.prefix.rstrip(":") + "x:")
    other = ModelCatalog(redis_client, other_keys)
    backup = CatalogBackup(redis_client, other_keys, other)
    assert await backup.import_(snapshot) == (1, 3)
    assert [v.version for v in await other.list_versions("m")] == [1, 2, 3]
    assert await other.resolve("m") == 2 and await other.canary("m") == (3, 25)
    await other.rollback("m")  # the stable history came along
    assert await other.resolve("m") == 1
    # The next publish continues after the last number, never reusing one.
    assert (await other.publish("m", "m/new", "f" * 64, "test")).version == 4
    with pytest.raises(ServiceError) as err:
        await backup.import_(snapshot)
    assert err.value.code == events_pb2.ERROR_CODE_FAILED_PRECONDITION


async def test_grpc_publish_refuses_a_missing_directory_clearly(registry_stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry_stub.Publish(registry_pb2.PublishRequest(name="m", directory="/nonexistent/model"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.json" in err.value.details()


async def test_publishing_streams_progress_and_leaves_the_event_loop_free(registry_addr, tmp_path):
    """Hashing and copying run on threads: the registry's loop (its heartbeats) keeps its pace."""
    from llmserve.common.registry_client import RegistryClient

    source = tmp_path / "big-model"
    source.mkdir()
    (source / "config.json").write_text("{}")
    with open(source / "model.safetensors", "wb") as fh:
        fh.truncate(768 << 20)
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    ticking = asyncio.create_task(ticker())
    client = RegistryClient(registry_addr)
    stages, version = set(), None
    async for update in client.publish(registry_pb2.PublishRequest(name="big", directory=str(source))):
        if update.HasField("version"):
            version = update.version
        else:
            stages.add(update.stage.name)
            assert update.stage.total_bytes >= 768 << 20
    done.set()
    await ticking
    await client.close()
    assert version is not None and version.version == 1 and {"checksum", "copy"} <= stages
    assert len(lags) > 20 and max(lags) < 0.25, f"the loop stalled {max(lags):.2f} s during the publish"


async def _publish_three(catalog: ModelCatalog, guard: RegistryGuard) -> None:
    for i in range(3):
        await guard.check()
        record = await catalog.publish("m", f"m/{i}", f"{i:064x}", "test")
        guard.note_version("m", record.version)
    await catalog.promote("m", 2)


def connect(server: ServerProcess, keys: RedisKeys, store: Path) -> tuple[aioredis.Redis, ModelCatalog, RegistryGuard]:
    client = aioredis.from_url(server.url)
    catalog = ModelCatalog(client, keys)
    return client, catalog, RegistryGuard(catalog, store, server.url, keys.prefix)


def restart_empty(server: ServerProcess) -> None:
    server.stop()
    shutil.rmtree(server.data_dir)
    server.start()


async def test_redis_restarts_with_aof_and_without_its_data(tmp_path: Path):
    port = infra.free_port()
    server = ServerProcess("redis", f"redis://127.0.0.1:{port}/0", tmp_path / "redis", extra={"aof": True})
    server.start()
    keys = RedisKeys("llm:")
    store = tmp_path / "store"
    try:
        client, catalog, guard = connect(server, keys, store)
        await _publish_three(catalog, guard)
        backup = await CatalogBackup(client, keys, catalog).export()
        await client.aclose()

        # Restarted with its append-only file: everything is there.
        server.stop()
        server.start()
        client, catalog, guard = connect(server, keys, store)
        await guard.check()
        assert [v.version for v in await catalog.list_versions("m")] == [1, 2, 3]
        assert await catalog.resolve("m") == 2
        assert len(await catalog.audit("m")) == 4
        await client.aclose()

        # Restarted empty: the guard refuses instead of handing out version 1 again.
        restart_empty(server)
        client, catalog, guard = connect(server, keys, store)
        with pytest.raises(RegistryLost) as err:
            await guard.check()
        assert "llmserve models import" in err.value.message
        # Recovery from the backup; numbering goes on.
        await CatalogBackup(client, keys, catalog).import_(backup, min_counters=guard.last_versions())
        await guard.check()
        assert await catalog.resolve("m") == 2
        assert (await catalog.publish("m", "m/next", "e" * 64, "test")).version == 4
        await client.aclose()

        # Or, with no backup at hand, a new registry whose numbers continue.
        restart_empty(server)
        client, catalog, guard = connect(server, keys, store)
        guard.note_version("m", 4)
        await guard.reinit(client, keys)
        await guard.check()
        assert (await catalog.publish("m", "m/after", "d" * 64, "test")).version == 5
        await client.aclose()
    finally:
        server.stop()


async def test_every_change_is_announced_on_nats(catalog, redis_client, keys, nc, subjects):
    from llmserve.registry.announcer import ChangeAnnouncer

    await catalog.publish("m", "m/a", "a" * 64, "test")
    got: asyncio.Queue[events_pb2.RegistryChange] = asyncio.Queue()

    async def on_change(msg) -> None:
        await got.put(events_pb2.RegistryChange.FromString(msg.data))

    await nc.subscribe(subjects.registry_changes, cb=on_change)
    await nc.flush()
    announcer = ChangeAnnouncer(redis_client, keys, nc, subjects)
    task = asyncio.create_task(announcer.run(block_ms=100))
    try:
        await asyncio.wait_for(announcer.positioned.wait(), 10)
        await catalog.publish("m", "m/b", "b" * 64, "cli")
        change = await asyncio.wait_for(got.get(), 10)
        # Only changes after the announcer started: the first publish was not announced.
        assert (change.model, change.kind, change.version) == ("m", events_pb2.REGISTRY_ACTION_PUBLISH, 2)
        audit_id = await catalog.promote("m", 2, actor="someone")
        change = await asyncio.wait_for(got.get(), 10)
        assert (change.kind, change.version, change.audit_id) == (events_pb2.REGISTRY_ACTION_PROMOTE, 2, audit_id)
        # Readers built before `kind` existed still get the text.
        assert change.action == "promote"
    finally:
        task.cancel()


async def test_llmserve_up_finds_the_published_default_model_without_importing_torch(registry_addr, redis_srv, keys, model_store, smollm):
    """`llmserve up`'s own publish step, against a registry that has the model: no torch, no transformers
    on the CLI's side (it asks the registry, which finds the version)."""
    import os
    import sys

    from tests.helpers.registry import with_catalog

    record = await with_catalog(redis_srv.url, keys.prefix, lambda c: c.publish(smollm.name, smollm.path, smollm.sha256, "test"))
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from llmserve.cli.models import ensure_default\n"
        "from llmserve.common.registry_client import RegistryClient\n"
        f"record = asyncio.run(ensure_default(RegistryClient({registry_addr!r}), Path('.')))\n"
        "print(record.version, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out.decode().split() == [str(record.version), "False", "False"], err.decode()[-2000:]

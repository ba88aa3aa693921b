"""The scheduler and the worker's puller over a real JetStream."""

import asyncio
import time

import pytest

from llmserve.common.liveness import LivenessTable
from llmserve.model_worker.job_puller import JobPuller
from llmserve.scheduler import queues as queues_module
from llmserve.scheduler.queues import JobQueues
from llmserve.scheduler.service import Scheduler
from llmserve.scheduler.tenants import TenantLimits, TenantPolicy
from llmserve.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.integration


def job(rid: str, priority: int = common_pb2.PRIORITY_NORMAL, model: str = "m", tenant: str = "") -> events_pb2.Job:
    return events_pb2.Job(
        request_id=rid, model=model, prompt="x", priority=priority, reply_subject=f"r.{rid}", submitted_at=time.time(), tenant=tenant
    )


async def live_worker(liveness: LivenessTable, model: str = "m", version: int = 1) -> None:
    liveness.observe(
        events_pb2.Heartbeat(
            instance_id=f"w-{model}-{version}", kind=events_pb2.INSTANCE_KIND_WORKER, ready=True, model=model, model_version=version
        )
    )


def make_scheduler(nc, subjects, catalog, redis_client, keys, max_queued=5, tenant_max_active=0, max_priority=common_pb2.PRIORITY_CRITICAL):
    liveness = LivenessTable()
    tenants = TenantPolicy(redis_client, keys, TenantLimits(tenant_max_active, max_priority), lease_s=60)
    return Scheduler(nc, subjects, catalog, liveness, JobQueues(nc, subjects, max_queued), tenants), liveness


@pytest.fixture
async def scheduler(nc, subjects, catalog, redis_client, keys):
    sched, liveness = make_scheduler(nc, subjects, catalog, redis_client, keys)
    await catalog.publish("m", "m/a", "a" * 64, "test")
    yield sched, liveness
    for name in await catalog.model_names():
        try:
            await nc.jetstream().delete_stream(subjects.jobs_stream(name))
        except Exception:
            pass


@pytest.fixture
async def puller(nc, subjects, scheduler):
    p = JobPuller(nc, subjects, "m", 1)
    await p.start()
    yield p
    await p.stop()


async def test_no_live_worker_is_unavailable(scheduler):
    sched, _ = scheduler
    reply = await sched.submit(job("a").SerializeToString())
    assert reply.error_code == events_pb2.ERROR_CODE_UNAVAILABLE


async def test_unknown_model_is_not_found(scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    reply = await sched.submit(job("a", model="other").SerializeToString())
    assert reply.error_code == events_pb2.ERROR_CODE_NOT_FOUND


async def test_garbage_submission_is_invalid(scheduler):
    sched, _ = scheduler
    reply = await sched.submit(b"\xff\xff\xff")
    assert reply.error_code == events_pb2.ERROR_CODE_INVALID_ARGUMENT


async def test_passed_deadline_is_refused_before_queueing(scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    j = job("a")
    j.deadline = time.time() - 1
    reply = await sched.submit(j.SerializeToString())
    assert reply.error_code == events_pb2.ERROR_CODE_DEADLINE_EXCEEDED


async def test_jobs_are_pulled_highest_priority_first(scheduler, puller):
    sched, liveness = scheduler
    await live_worker(liveness)
    for rid, prio in [("low", common_pb2.PRIORITY_LOW), ("normal", common_pb2.PRIORITY_NORMAL), ("high", common_pb2.PRIORITY_HIGH)]:
        reply = await sched.submit(job(rid, prio).SerializeToString())
        assert reply.error_code == 0 and reply.model_version == 1
    order = []
    for _ in range(3):
        (msg,) = await puller.pull(1)
        await msg.ack()
        order.append(events_pb2.Job.FromString(msg.data).request_id)
    assert order == ["high", "normal", "low"]


async def test_empty_queues_answer_at_once(puller):
    started = time.monotonic()
    assert await puller.pull(4) == []
    # Four no-wait pulls are round trips on loopback, far below the 2 s pull timeout.
    assert time.monotonic() - started < 1.0


async def test_same_request_id_is_queued_once(scheduler, puller):
    sched, liveness = scheduler
    await live_worker(liveness)
    for _ in range(3):
        assert (await sched.submit(job("dup").SerializeToString())).error_code == 0
    msgs = await puller.pull(5)
    assert [events_pb2.Job.FromString(m.data).request_id for m in msgs] == ["dup"]


async def test_full_queue_is_resource_exhausted(scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    replies = [await sched.submit(job(f"j{i}").SerializeToString()) for i in range(7)]
    codes = [r.error_code for r in replies]
    assert codes[:5] == [0] * 5
    assert codes[5:] == [events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED] * 2
    assert replies[5].retry_after_s > 0


async def test_doorbell_rings_when_a_job_is_queued(nc, subjects, scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    rang = asyncio.get_running_loop().create_future()

    async def ring(_msg):
        if not rang.done():
            rang.set_result(True)

    sub = await nc.subscribe(subjects.doorbell("m", 1), cb=ring)
    await nc.flush()
    await sched.submit(job("a").SerializeToString())
    assert await asyncio.wait_for(rang, 5)
    await sub.unsubscribe()


async def test_fallback_model_serves_while_the_model_has_no_worker(scheduler, catalog):
    sched, liveness = scheduler
    await catalog.publish("backup", "backup/a", "b" * 64, "test")
    await live_worker(liveness, model="backup", version=1)
    assert (await sched.submit(job("no-fallback-yet").SerializeToString())).error_code == events_pb2.ERROR_CODE_UNAVAILABLE
    await catalog.set_fallback("m", "backup")
    reply = await sched.submit(job("degraded").SerializeToString())
    assert reply.error_code == 0 and reply.model == "backup" and reply.model_version == 1
    # An explicit version asks for exactly that model: no fallback.
    pinned = job("pinned")
    pinned.model_version = 1
    assert (await sched.submit(pinned.SerializeToString())).error_code == events_pb2.ERROR_CODE_UNAVAILABLE
    # With its own worker back, the model serves itself again.
    await live_worker(liveness, model="m", version=1)
    assert (await sched.submit(job("healthy").SerializeToString())).model == "m"


async def test_fallback_must_be_a_published_other_model(catalog):
    from llmserve.common.errors import ServiceError

    await catalog.publish("m", "m/a", "a" * 64, "test")
    with pytest.raises(ServiceError):
        await catalog.set_fallback("m", "m")
    with pytest.raises(ServiceError):
        await catalog.set_fallback("m", "nope")


async def test_each_model_has_its_own_bounded_queue(scheduler, catalog):
    sched, liveness = scheduler
    await catalog.publish("n", "n/a", "c" * 64, "test")
    await live_worker(liveness)
    await live_worker(liveness, model="n")
    codes = [(await sched.submit(job(f"m{i}").SerializeToString())).error_code for i in range(6)]
    assert codes == [0] * 5 + [events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED]
    # Model m's full queue does not stop model n.
    assert (await sched.submit(job("n0", model="n").SerializeToString())).error_code == 0


async def test_tenant_limit_counts_queued_and_running_until_done(nc, subjects, catalog, redis_client, keys):
    sched, liveness = make_scheduler(nc, subjects, catalog, redis_client, keys, max_queued=100, tenant_max_active=2)
    await catalog.publish("m", "m/a", "a" * 64, "test")
    await live_worker(liveness)
    await sched.start()
    try:
        codes = [(await sched.submit(job(f"a{i}", tenant="acme").SerializeToString())).error_code for i in range(3)]
        assert codes == [0, 0, events_pb2.ERROR_CODE_RESOURCE_EXHAUSTED]
        # Another tenant is not held back by acme's flood.
        assert (await sched.submit(job("b0", tenant="bob").SerializeToString())).error_code == 0
        # A request's end (announced by its router) frees its share.
        await nc.publish(subjects.done, events_pb2.JobDone(request_id="a0", tenant="acme").SerializeToString())
        deadline = time.monotonic() + 5
        while (await sched._tenants.active("acme")) != 1:
            assert time.monotonic() < deadline, "the share was not released"
            await asyncio.sleep(0.02)
        assert (await sched.submit(job("a3", tenant="acme").SerializeToString())).error_code == 0
    finally:
        await sched.stop()
        await nc.jetstream().delete_stream(subjects.jobs_stream("m"))


async def test_priority_is_capped_by_what_the_tenant_may_use(nc, subjects, catalog, redis_client, keys):
    from llmserve.registry.records import set_tenant_limits
    from llmserve.v1 import registry_pb2

    sched, liveness = make_scheduler(nc, subjects, catalog, redis_client, keys, max_priority=common_pb2.PRIORITY_HIGH)
    await catalog.publish("m", "m/a", "a" * 64, "test")
    await live_worker(liveness)
    await set_tenant_limits(redis_client, keys, registry_pb2.TenantLimits(tenant="batch", max_priority=common_pb2.PRIORITY_LOW), actor="test")
    puller = JobPuller(nc, subjects, "m", 1)
    await puller.start()
    try:
        await sched.submit(job("vip", common_pb2.PRIORITY_CRITICAL, tenant="acme").SerializeToString())
        await sched.submit(job("bulk", common_pb2.PRIORITY_HIGH, tenant="batch").SerializeToString())
        got = {}
        for msg in await puller.pull(2):
            j = events_pb2.Job.FromString(msg.data)
            got[j.request_id] = j.priority
        assert got == {"vip": common_pb2.PRIORITY_HIGH, "bulk": common_pb2.PRIORITY_LOW}
    finally:
        await puller.stop()
        await nc.jetstream().delete_stream(subjects.jobs_stream("m"))


async def test_an_old_low_priority_job_ages_past_newer_high_ones(nc, subjects, scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    old = job("old-low", common_pb2.PRIORITY_LOW)
    old.submitted_at = time.time() - 10  # waited 10 aging steps of 1 s: counts as critical
    assert (await sched.submit(old.SerializeToString())).error_code == 0
    assert (await sched.submit(job("new-high", common_pb2.PRIORITY_HIGH).SerializeToString())).error_code == 0
    strict = JobPuller(nc, subjects, "m", 1)
    await strict.start()
    (first,) = await strict.pull(1)
    assert events_pb2.Job.FromString(first.data).request_id == "new-high"
    await first.nak()  # back to the queue
    await strict.stop()
    aging = JobPuller(nc, subjects, "m", 1, aging_step_s=1.0)
    await aging.start()
    await aging.refresh_order()  # what the puller's background probe does every second
    order = [events_pb2.Job.FromString(m.data).request_id for m in await aging.pull(2)]
    await aging.stop()
    assert order == ["old-low", "new-high"]


async def test_an_expired_job_leaves_the_queue_by_itself(nc, subjects, scheduler):
    sched, liveness = scheduler
    await live_worker(liveness)
    short = job("short")
    short.deadline = time.time() + 1.0
    assert (await sched.submit(short.SerializeToString())).error_code == 0
    js = nc.jetstream()
    assert (await js.stream_info(subjects.jobs_stream("m"))).state.messages == 1
    deadline = time.monotonic() + 10
    while (await js.stream_info(subjects.jobs_stream("m"))).state.messages:
        assert time.monotonic() < deadline, "JetStream kept the expired job"
        await asyncio.sleep(0.1)


async def test_canary_takes_its_weight_of_stable_traffic(catalog):
    await catalog.publish("m", "m/a", "a" * 64, "test")
    await catalog.publish("m", "m/b", "b" * 64, "test")
    await catalog.set_canary("m", 2, 20)
    picks = [await catalog.resolve("m", "stable", route_key=f"req-{i}") for i in range(1000)]
    assert 150 <= picks.count(2) <= 250
    # One request id always lands on the same side.
    assert {await catalog.resolve("m", "stable", route_key="req-7") for _ in range(5)} == {picks[7]}
    # Without a route key (probes, workers) the alias means exactly the stable version.
    assert await catalog.resolve("m") == 1


async def test_doorbell_hints_spare_round_trips_and_a_lost_doorbell_is_swept_up(nc, subjects, scheduler, monkeypatch):
    from llmserve.model_worker import job_puller

    sched, liveness = scheduler
    await live_worker(liveness)
    rung = asyncio.Event()
    puller = JobPuller(nc, subjects, "m", 1)
    await puller.start(on_ring=rung.set)
    asked: list[str] = []
    pull_one = puller._pull_one

    async def counting(consumer, batch, timeout_s):
        asked.append(consumer)
        return await pull_one(consumer, batch, timeout_s)

    monkeypatch.setattr(puller, "_pull_one", counting)
    try:
        assert await puller.pull(4) == []  # the first pull asks every level and finds them empty
        assert len(asked) == 4
        asked.clear()
        await sched.submit(job("low", common_pb2.PRIORITY_LOW).SerializeToString())
        await asyncio.wait_for(rung.wait(), 5)
        (msg,) = await puller.pull(4)
        await msg.ack()
        assert events_pb2.Job.FromString(msg.data).request_id == "low"
        # Only the level the doorbell named was asked, not the three empty ones above it.
        assert asked == [subjects.jobs_consumer("m", 1, common_pb2.PRIORITY_LOW)]

        # A job whose doorbell never came is still taken, by the next full sweep.
        monkeypatch.setattr(job_puller, "_FULL_SWEEP_S", 0.2)
        await nc.jetstream().publish(subjects.jobs("m", 1, common_pb2.PRIORITY_HIGH), job("quiet").SerializeToString())
        deadline = time.monotonic() + 5
        taken = []
        while not taken and time.monotonic() < deadline:
            taken = await puller.pull(4)
        assert [events_pb2.Job.FromString(m.data).request_id for m in taken] == ["quiet"]
        await taken[0].ack()
    finally:
        await puller.stop()


async def test_after_a_reconnect_a_known_stream_takes_jobs_while_jetstreams_api_is_silent(nc, subjects, monkeypatch):
    """A reconnect often means a server of the cluster died, maybe the one that led JetStream's API: the
    stream as known before is published to without waiting for that API, and checked once it says nothing."""
    queues = JobQueues(nc, subjects, max_queued_per_model=10)
    await queues.ensure("m")
    queues.forget_streams()

    async def api_silent(*args, **kwargs) -> bool:
        raise TimeoutError("JetStream's API is electing its leader")

    monkeypatch.setattr(queues_module, "ensure_jobs_stream", api_silent)
    assert await queues.publish(job("after-reconnect"), {})
    info = await nc.jetstream().stream_info(subjects.jobs_stream("m"))
    assert info.state.messages == 1
    # The publish proved the stream: the next one does not ask the API either.
    assert await queues.publish(job("next"), {})

    # A model whose stream was never known waits for the API; the job, surely not stored, may be handed off.
    handed: list[str] = []

    async def hand_off(j: events_pb2.Job, headers: dict[str, str]) -> bool:
        handed.append(j.request_id)
        return True

    assert await queues.publish(job("new-model", model="other"), {}, hand_off=hand_off)
    assert handed == ["new-model"]
    await nc.jetstream().delete_stream(subjects.jobs_stream("m"))

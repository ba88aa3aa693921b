"""The scheduler and the worker's puller over a real JetStream."""

import asyncio
import time

import pytest

from llmserve.common.liveness import LivenessTable
from llmserve.common.natsio import ensure_jobs_stream
from llmserve.model_worker.job_puller import JobPuller
from llmserve.scheduler.service import Scheduler
from llmserve.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.integration


def job(rid: str, priority: int = common_pb2.PRIORITY_NORMAL, model: str = "m") -> events_pb2.Job:
    return events_pb2.Job(request_id=rid, model=model, prompt="x", priority=priority, reply_subject=f"r.{rid}", submitted_at=time.time())


async def live_worker(liveness: LivenessTable, model: str = "m", version: int = 1) -> None:
    liveness.observe(
        events_pb2.Heartbeat(instance_id="w1", kind=events_pb2.INSTANCE_KIND_WORKER, ready=True, model=model, model_version=version)
    )


@pytest.fixture
async def scheduler(nc, subjects, catalog):
    await ensure_jobs_stream(nc, subjects, max_queued=5)
    liveness = LivenessTable()
    sched = Scheduler(nc, subjects, catalog, liveness)
    await catalog.publish("m", "m/a", "a" * 64, "test")
    yield sched, liveness
    await nc.jetstream().delete_stream(subjects.jobs_stream)


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

"""Handing a job straight to a worker while the queue has no stream leader, or its consumer none
(scheduler/direct.py), over a real NATS and Redis: workers that answer on their direct subjects stand
in for model workers."""

import time

import pytest

from llmserve.common.liveness import LivenessTable
from llmserve.common.subjects import DIRECT_UNTIL_HEADER, attempt_key
from llmserve.scheduler.direct import ACCEPT_WITHIN_S, DirectHandoff
from llmserve.scheduler.queues import JobQueues
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.integration


def job(rid: str, age_s: float = 0.0) -> events_pb2.Job:
    return events_pb2.Job(request_id=rid, model="m", model_version=1, prompt="x", reply_subject=f"r.{rid}", submitted_at=time.time() - age_s)


def beat(instance: str, free: int) -> events_pb2.Heartbeat:
    return events_pb2.Heartbeat(instance_id=instance, kind=events_pb2.INSTANCE_KIND_WORKER, ready=True, model="m", model_version=1,
                                slots_total=4, slots_busy=4 - free)


@pytest.fixture
async def workers(nc, subjects):
    """Two workers on their direct subjects: `busy` declines, `free` takes; each notes what it was asked."""
    asked: dict[str, list[tuple[events_pb2.Job, float]]] = {"busy": [], "free": []}

    def answer(name: str, taken: bool):
        async def on_msg(msg) -> None:
            asked[name].append((events_pb2.Job.FromString(msg.data), float(msg.headers[DIRECT_UNTIL_HEADER])))
            await msg.respond(events_pb2.DirectJobReply(taken=taken).SerializeToString())
        return on_msg

    subs = [await nc.subscribe(subjects.direct("m", 1, "busy"), cb=answer("busy", False)),
            await nc.subscribe(subjects.direct("m", 1, "free"), cb=answer("free", True))]
    await nc.flush()
    yield asked
    for sub in subs:
        await sub.unsubscribe()


@pytest.fixture
def liveness():
    table = LivenessTable()
    # By its last heartbeat `busy` has more free slots: it is asked first, and declines.
    table.observe(beat("busy", free=3))
    table.observe(beat("free", free=1))
    table.observe(beat("full", free=0))
    return table


async def test_a_job_goes_to_the_first_worker_that_takes_it_once(nc, subjects, redis_client, keys, liveness, workers):
    direct = DirectHandoff(nc, subjects, liveness, redis_client, keys)
    sent_at = time.time()
    assert await direct.hand_off(job("j1"), {})
    assert [j.request_id for j, _ in workers["busy"]] == ["j1"] and [j.request_id for j, _ in workers["free"]] == ["j1"]
    # The worker must decline it past the hand-off's time.
    _, until = workers["free"][0]
    assert sent_at < until <= time.time() + ACCEPT_WITHIN_S
    assert await redis_client.exists(keys.handed_directly(attempt_key("j1", 0)))
    # The same attempt again (a router resubmitting it) is not handed to anyone a second time...
    assert await direct.hand_off(job("j1"), {})
    assert len(workers["free"]) == 1
    # ...and a resubmission that is not fresh is known as handed, so it is not queued either.
    assert await direct.handed_before(job("j1", age_s=5.0))
    # A fresh submission is not checked (one Redis call saved per ordinary job); another attempt is new.
    assert not await direct.handed_before(job("j1"))
    later = job("j1", age_s=5.0)
    later.attempt = 1
    assert not await direct.handed_before(later)


async def test_when_no_worker_takes_it_the_job_waits_for_the_queue(nc, subjects, redis_client, keys, workers):
    liveness = LivenessTable()
    liveness.observe(beat("busy", free=2))
    liveness.observe(beat("gone", free=2))  # has no direct subscription: its request finds no responder
    direct = DirectHandoff(nc, subjects, liveness, redis_client, keys)
    assert not await direct.hand_off(job("j2"), {})
    assert len(workers["busy"]) == 1
    # No marker is left behind: the job is queued once the queue is back.
    assert not await redis_client.exists(keys.handed_directly(attempt_key("j2", 0)))
    assert not await direct.handed_before(job("j2", age_s=5.0))


async def test_no_worker_with_a_free_slot_means_no_hand_off(nc, subjects, redis_client, keys, workers):
    liveness = LivenessTable()
    liveness.observe(beat("full", free=0))
    direct = DirectHandoff(nc, subjects, liveness, redis_client, keys)
    assert not await direct.hand_off(job("j3"), {})
    assert not await redis_client.exists(keys.handed_directly(attempt_key("j3", 0)))


async def test_a_job_whose_consumer_has_no_leader_is_handed_off_before_it_is_queued(nc, subjects, redis_client, keys, liveness, workers):
    queues = JobQueues(nc, subjects, max_queued_per_model=10)
    await queues.ensure("m")
    leaderless = {(subjects.jobs_stream("m"), subjects.jobs_consumer("m", 1, 2))}
    queues.consumer_leaderless = lambda stream, consumer: (stream, consumer) in leaderless
    direct = DirectHandoff(nc, subjects, liveness, redis_client, keys)
    stored = subjects.jobs("m", 1, 2)

    # The stream would store it, but the consumer that hands it out has no leader: a worker takes it.
    led_elsewhere = job("j4")
    led_elsewhere.priority = 2
    assert await queues.publish(led_elsewhere, {}, hand_off=direct.hand_off)
    assert [j.request_id for j, _ in workers["free"]] == ["j4"]
    assert not await waiting(nc, subjects, stored)

    # No worker takes it: it is queued as usual.
    nobody = DirectHandoff(nc, subjects, LivenessTable(), redis_client, keys)
    queued = job("j5")
    queued.priority = 2
    assert await queues.publish(queued, {}, hand_off=nobody.hand_off)
    assert await waiting(nc, subjects, stored) == 1

    # A consumer with a leader: queued, nobody asked.
    other = job("j6")
    other.priority = 1
    assert await queues.publish(other, {}, hand_off=direct.hand_off)
    assert [j.request_id for j, _ in workers["free"]] == ["j4"]
    assert await waiting(nc, subjects, subjects.jobs("m", 1, 1)) == 1


async def waiting(nc, subjects, subject: str) -> int:
    info = await nc.jetstream().stream_info(subjects.jobs_stream("m"), subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)

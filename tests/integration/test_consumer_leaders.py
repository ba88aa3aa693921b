"""Keeping the job queue's consumers led by its stream's leader (scheduler/leaders.py), on a real cluster
of three nats-servers: misplaced leaders are moved by a pass and, once it runs, on JetStream's own
advisories; a consumer then keeps handing out jobs while a server that leads nothing dies. When the
server that leads them all dies, a consumer still waiting for its election once the stream has a new
leader is known to be without one (the scheduler hands its jobs to workers directly meanwhile)."""

import asyncio
import json
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

from llmserve.common.natsio import ensure_jobs_stream
from llmserve.common.subjects import Subjects
from llmserve.scheduler.leaders import ConsumerLeaderAlignment
from tests.helpers.servers import jetstream_ready, nats_cluster

pytestmark = pytest.mark.integration

MODEL = "m"
CONSUMERS = 4
# Seconds after the stream's election by which a consumer still without a leader is known to be.
NOTICED_S = 1.5


@pytest.fixture
def cluster(tmp_path):
    nodes = nats_cluster(tmp_path)
    try:
        asyncio.run(jetstream_ready([n.url for n in nodes]))
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def leaders(js, stream: str, count: int = CONSUMERS) -> tuple[str, dict[str, str | None]]:
    """The stream's leader and each consumer's, each asked of itself (listing a stream's consumers may
    take seconds, and come back partial, while leaderships change)."""
    info = await js.stream_info(stream)
    found = {}
    for i in range(count):
        consumer = await js.consumer_info(stream, f"c{i}")
        found[consumer.name] = consumer.cluster.leader if consumer.cluster else None
    return info.cluster.leader, found


async def listed_whole(js, stream: str, count: int) -> bool:
    """Whether listing the stream's consumers gives them all (as the scheduler's sweep reads them)."""
    return len(await js.consumers_info(stream)) == count


async def until(check, timeout_s: float, what: str, per_try_s: float = 2.0):
    """Until `check` answers true; a try that takes longer than `per_try_s` (an API call caught in an
    election) is given up and made again."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await asyncio.wait_for(check(), per_try_s)
            if result:
                return result
        except Exception:  # an API call during an election: ask again
            pass
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def step_away(nc, js, stream: str) -> str:
    """Asks every consumer to step down in favour of a server that does not lead the stream; returns it."""
    stream_leader, consumers = await leaders(js, stream)
    elsewhere = next(name for name in await servers(js, stream) if name != stream_leader)
    for name in consumers:
        await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{name}", json.dumps({"placement": {"preferred": elsewhere}}).encode(),
                         timeout=2)
    return elsewhere


async def moved_away(js, stream: str, elsewhere: str) -> bool:
    _, consumers = await leaders(js, stream)
    return all(leader == elsewhere for leader in consumers.values())


def moves(stream: str) -> float:
    return REGISTRY.get_sample_value("llmserve_scheduler_consumer_leader_moves_total", {"stream": stream}) or 0.0


async def servers(js, stream: str) -> list[str]:
    info = await js.stream_info(stream)
    return [info.cluster.leader] + [r.name for r in info.cluster.replicas]


async def aligned(js, stream: str, count: int = CONSUMERS) -> bool:
    stream_leader, consumers = await leaders(js, stream, count)
    return all(leader == stream_leader for leader in consumers.values())


def test_consumers_follow_the_stream_leader_and_a_follower_may_die_without_a_pause(cluster):
    asyncio.run(consumers_follow_the_stream_leader(cluster))


async def make_queue(nc, subjects: Subjects, consumers: int) -> str:
    stream = subjects.jobs_stream(MODEL)
    js = nc.jetstream(timeout=5)
    await ensure_jobs_stream(nc, subjects, MODEL, 100, replicas=3)
    for i in range(consumers):
        await js.add_consumer(stream, ConsumerConfig(durable_name=f"c{i}", filter_subject=subjects.jobs(MODEL, 1, i),
                                                     ack_policy=AckPolicy.EXPLICIT))
    return stream


async def consumers_follow_the_stream_leader(nodes) -> None:
    subjects = Subjects("llm")
    nc = await nats.connect([n.url for n in nodes])
    js = nc.jetstream(timeout=5)
    stream = await make_queue(nc, subjects, CONSUMERS)
    alignment = ConsumerLeaderAlignment(nc, subjects.jobs_stream_prefix, lambda: [stream], sweep_s=3600)
    try:

        # One pass moves every consumer led elsewhere; those it sees for the first time (maybe being
        # made just now: a stepdown would cut off the answer its maker waits for) a moment later.
        elsewhere = await step_away(nc, js, stream)
        await until(lambda: moved_away(js, stream, elsewhere), 10, "the consumers' leaders did not move away from the stream's leader")
        await until(lambda: listed_whole(js, stream, CONSUMERS), 20, "the stream's consumers were not listed", per_try_s=10)
        before = moves(stream)
        assert await alignment.align(stream) == 0
        await until(lambda: aligned(js, stream), 10, "one pass did not bring the consumers to the stream's leader")
        assert moves(stream) == before + CONSUMERS
        assert await alignment.align(stream) == 0

        # Running, it follows JetStream's advisories (its sweep is an hour away): consumers moved away
        # come back, and when the stream's leader changes they follow it.
        await alignment.start()
        before = moves(stream)
        await step_away(nc, js, stream)

        async def moved_back() -> bool:
            return moves(stream) > before and await aligned(js, stream)

        await until(moved_back, 10, "the consumers were not moved back after their leaders changed")
        old_leader, _ = await leaders(js, stream)
        before = moves(stream)
        answer = json.loads((await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)).data)
        assert answer.get("success"), answer

        async def followed() -> bool:
            stream_leader, _ = await leaders(js, stream)
            return stream_leader != old_leader and moves(stream) > before and await aligned(js, stream)

        await until(followed, 15, "the consumers did not follow the stream's new leader")

        # A server that leads neither the stream nor a consumer dies: jobs are still handed out at once
        # (a consumer led there would hand out nothing until its Raft election, 4 to 9 s).
        # This client is connected to the leader's server, so it has no reconnect of its own to make.
        stream_leader, _ = await leaders(js, stream)
        follower = next(n for n in nodes if n.name != stream_leader)
        client = await nats.connect(next(n.url for n in nodes if n.name == stream_leader))
        client_js = client.jetstream(timeout=2)
        follower.kill()
        await client_js.publish(subjects.jobs(MODEL, 1, 2), b"job", timeout=2)
        sub = await client_js.pull_subscribe_bind("c2", stream=stream)
        msgs = await sub.fetch(1, timeout=2)
        assert [m.data for m in msgs] == [b"job"]
        await msgs[0].ack_sync(timeout=2)
        await client.close()
    finally:
        await alignment.stop()
        await nc.close()


def test_consumers_that_died_with_the_stream_leader_are_known_leaderless_until_elected(cluster):
    asyncio.run(leaderless_until_elected(cluster))


async def leaderless_until_elected(nodes) -> None:
    subjects = Subjects("llm")
    setup = await nats.connect([n.url for n in nodes])
    consumers = 3 * CONSUMERS  # more elections: more chances of one coming well after the stream's
    stream = await make_queue(setup, subjects, consumers)
    js = setup.jetstream(timeout=5)
    # Everything on one server, as the scheduler keeps it; then that server dies.
    await ConsumerLeaderAlignment(setup, subjects.jobs_stream_prefix, lambda: [stream]).align(stream)
    await until(lambda: aligned(js, stream, consumers), 10, "the consumers were not brought to the stream's leader")
    doomed, _ = await leaders(js, stream, consumers)
    await setup.close()
    survivors = [n.url for n in nodes if n.name != doomed]
    nc = await nats.connect(survivors)  # kept connected through the kill
    alignment = ConsumerLeaderAlignment(nc, subjects.jobs_stream_prefix, lambda: [stream], sweep_s=3600)
    # It knows every consumer's leader before the kill, as a running scheduler does from its sweeps
    # (the list is whole once no leadership is changing).
    await until(lambda: listed_whole(nc.jetstream(timeout=10), stream, consumers), 20, "the stream's consumers were not listed", per_try_s=10)
    assert await alignment.align(stream) == 0
    elected: dict[str, float] = {}

    async def on_elected(msg) -> None:
        tokens = msg.subject.split(".")
        elected.setdefault(tokens[6] if len(tokens) > 6 else "", time.monotonic())

    try:
        await alignment.start()
        await nc.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}", cb=on_elected)
        await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.*", cb=on_elected)
        await nc.flush()
        noticed: dict[str, float] = {}
        killed_at = time.monotonic()
        next(n for n in nodes if n.name == doomed).kill()
        deadline = killed_at + 40
        while len(elected) < consumers + 1:
            assert time.monotonic() < deadline, f"elections not over: {sorted(elected)}"
            for i in range(consumers):
                if alignment.leaderless(stream, f"c{i}"):
                    noticed.setdefault(f"c{i}", time.monotonic())
            await asyncio.sleep(0.05)
        # Each consumer elected well after the stream was known to have no leader before its election.
        late = [name for name, at in elected.items() if name and at > elected[""] + NOTICED_S]
        for name in late:
            assert name in noticed and noticed[name] < elected[name], (name, elected, noticed)

        # Elected, none is taken for leaderless any more, and they follow the stream's new leader.
        async def none_leaderless() -> bool:
            return not any(alignment.leaderless(stream, f"c{i}") for i in range(consumers))

        await until(none_leaderless, 5, "consumers that elected a leader are still taken for leaderless")
        await until(lambda: aligned(nc.jetstream(timeout=5), stream, consumers), 15, "the consumers did not follow the stream's new leader")
        print(json.dumps({"stream_elected_s": round(elected[""] - killed_at, 2), "consumers_elected_late": len(late),
                          "consumers_noticed_leaderless": len(noticed)}))
    finally:
        await alignment.stop()
        await nc.close()


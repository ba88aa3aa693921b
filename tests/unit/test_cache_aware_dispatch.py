"""Cache-aware dispatch's pieces: prefix keys of jobs, what a worker announces, the scheduler's choice,
and the subjects a worker's own queue uses."""

import pytest
import torch

from llmserve.common.liveness import LivenessTable
from llmserve.common.prefix_keys import PROMPT_CHUNK_BYTES, job_prefix_keys
from llmserve.common.subjects import Subjects
from llmserve.model_worker.prefix_announcer import PrefixAnnouncer
from llmserve.model_worker.prefix_cache import BLOCK, PrefixCache
from llmserve.scheduler.dispatch import PrefixDispatch
from llmserve.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.unit


def chat(*turns: tuple[str, str], **fields) -> events_pb2.Job:
    job = events_pb2.Job(request_id="r", model="m", model_version=1, **fields)
    job.messages.messages.extend(common_pb2.ChatMessage(role=role, content=content) for role, content in turns)
    return job


FIRST = [("system", "You help with the library."), ("user", "When does it open?")]
SECOND = [*FIRST, ("assistant", "At nine."), ("user", "And on Sundays?")]


def test_the_next_turn_shares_every_key_of_the_turn_before():
    first, second = job_prefix_keys(chat(*FIRST)), job_prefix_keys(chat(*SECOND))
    assert len(first) == 2 and len(second) == 4
    assert second[:2] == first
    # Another conversation shares the system message only; other tools change every key.
    assert job_prefix_keys(chat(FIRST[0], ("user", "Where is it?")))[0] == first[0]
    tools = [common_pb2.Tool(name="lookup")]
    assert set(job_prefix_keys(chat(*FIRST, tools=tools))).isdisjoint(first)


def test_prompt_keys_cover_whole_chunks_only():
    text = "x" * (2 * PROMPT_CHUNK_BYTES + 10)
    keys = job_prefix_keys(events_pb2.Job(prompt=text))
    assert len(keys) == 2
    assert job_prefix_keys(events_pb2.Job(prompt=text[: PROMPT_CHUNK_BYTES + 1])) == keys[:1]
    assert job_prefix_keys(events_pb2.Job(prompt="short")) == []


def test_a_worker_announces_keys_while_their_blocks_are_cached():
    kv = torch.zeros(1, 2, 1, 3 * BLOCK, 2)
    block_bytes = kv[..., :BLOCK, :].numel() * kv.element_size()
    cache = PrefixCache(max_bytes=3 * block_bytes)
    announcer = PrefixAnnouncer(cache)
    prompt = list(range(3 * BLOCK + 5))
    cache.put(prompt, kv)
    assert announcer.add([11, 12], prompt) is True
    assert announcer.add([11, 12], prompt) is False
    assert sorted(announcer.held()) == [11, 12]
    # Another prompt's blocks evict these: the keys are no longer announced.
    other = [t + 10_000 for t in prompt]
    cache.put(other, kv)
    announcer.add([21], other)
    assert announcer.held() == [21]
    # A prompt shorter than one block has nothing cached to announce.
    assert announcer.add([31], list(range(BLOCK - 1))) is False
    assert PrefixAnnouncer(None).add([1], prompt) is False


def beat(instance: str, keys: list[int], busy: int = 0, total: int = 4) -> events_pb2.Heartbeat:
    return events_pb2.Heartbeat(
        instance_id=instance, kind=events_pb2.INSTANCE_KIND_WORKER, ready=True, model="m", model_version=1,
        slots_total=total, slots_busy=busy, prefix_keys=keys,
    )


def test_the_scheduler_picks_the_worker_with_the_longest_prefix_and_room():
    liveness = LivenessTable()
    dispatch = PrefixDispatch(liveness)
    first, second = job_prefix_keys(chat(*FIRST)), job_prefix_keys(chat(*SECOND))
    liveness.observe(beat("w-short", first[:1]))
    liveness.observe(beat("w-long", first))
    liveness.observe(beat("w-none", []))
    assert dispatch.choose(chat(*SECOND)) == "w-long"
    # The holder is full: the next longest with room.
    liveness.observe(beat("w-long", first, busy=4))
    assert dispatch.choose(chat(*SECOND)) == "w-short"
    # Nobody holds anything of it, a continuation, another version: the shared queue.
    assert dispatch.choose(chat(("user", "Unrelated"))) is None
    assert dispatch.choose(chat(*SECOND, attempt=1)) is None
    other_version = chat(*SECOND)
    other_version.model_version = 2
    assert dispatch.choose(other_version) is None
    assert second[:2] == first


def test_a_workers_own_subjects_parse_back():
    subjects = Subjects("llm")
    own = subjects.jobs_for("m", 3, 2, "worker-host-12-abc")
    assert subjects.parse_jobs(own) == (3, 2, "worker-host-12-abc")
    assert subjects.parse_jobs(subjects.jobs("m", 3, 4)) == (3, 4, "")
    assert subjects.parse_jobs("llm.tokens.x") is None
    assert subjects.parse_jobs("llm.jobs.m.x.p2") is None

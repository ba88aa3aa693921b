"""The worker's record of what it published per request, for routers that re-attach a client."""

import pytest

from llmserve.model_worker.attach_book import AttachBook
from llmserve.router.generation import continuation, input_hash
from llmserve.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.unit


def job(rid: str, attempt: int = 0) -> events_pb2.Job:
    return events_pb2.Job(request_id=rid, attempt=attempt, prompt="hello", tenant="acme")


def chunk(rid: str, seq: int, attempt: int = 0, final: bool = False) -> events_pb2.TokenChunk:
    return events_pb2.TokenChunk(request_id=rid, seq=seq, attempt=attempt, token_ids=[seq], text=f"t{seq}", final=final)


def test_a_running_request_is_answered_with_every_chunk_so_far():
    book = AttachBook()
    for seq in range(3):
        book.record(job("a"), chunk("a", seq))
    reply = book.reply("a")
    assert reply.job.request_id == "a" and reply.job.tenant == "acme"
    assert [c.seq for c in reply.chunks] == [0, 1, 2]
    assert book.reply("unknown") is None


def test_a_new_attempt_replaces_the_earlier_one_and_late_chunks_of_the_old_one_are_ignored():
    book = AttachBook()
    book.record(job("a"), chunk("a", 0))
    book.record(job("a", 1), chunk("a", 0, attempt=1))
    book.record(job("a"), chunk("a", 1))  # late, of attempt 0
    reply = book.reply("a")
    assert reply.job.attempt == 1
    assert [(c.attempt, c.seq) for c in reply.chunks] == [(1, 0)]


def test_finished_requests_are_kept_for_the_retention_and_up_to_the_bound(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("llmserve.model_worker.attach_book.time.monotonic", lambda: now[0])
    book = AttachBook(retention_s=60.0, max_finished=2)
    for rid in ("a", "b", "c"):
        book.record(job(rid), chunk(rid, 0, final=True))
    # Three finished, two kept: the oldest went first.
    assert book.reply("a") is None and book.reply("b") is not None and book.reply("c") is not None
    book.record(job("d"), chunk("d", 0))  # running: never forgotten
    now[0] += 61.0
    assert book.reply("b") is None and book.reply("c") is None
    assert book.reply("d") is not None


def test_a_job_that_ended_without_a_final_chunk_is_forgotten_after_the_retention(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("llmserve.model_worker.attach_book.time.monotonic", lambda: now[0])
    book = AttachBook(retention_s=10.0)
    book.record(job("a"), chunk("a", 0))
    book.ended(job("a"))
    assert book.reply("a") is not None
    now[0] += 11.0
    assert book.reply("a") is None
    assert len(book) == 0


def test_a_continuation_counts_pieces_and_crashes():
    first = job("a")
    resumed = continuation(first, [1, 2, 3], 9, delivered_chunks=3, crashed=True)
    assert (resumed.attempt, resumed.resume_chunks, resumed.crashes) == (1, 3, 1)
    again = continuation(resumed, [1, 2, 3, 4], 12, delivered_chunks=4, crashed=False)
    assert (again.attempt, again.resume_chunks, again.crashes) == (2, 4, 1)
    assert again.priority == common_pb2.PRIORITY_CRITICAL


def test_the_input_hash_names_the_input_not_the_attempt():
    a, b = job("a"), job("b", attempt=2)
    assert input_hash(a) == input_hash(b)
    b.prompt = "hello!"
    assert input_hash(a) != input_hash(b)
    assert "hello" not in input_hash(a)

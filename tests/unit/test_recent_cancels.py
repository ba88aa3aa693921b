"""Cancels a worker keeps for jobs that do not run yet (model_worker/cancels.py)."""

import pytest

from llmserve.model_worker.cancels import RecentCancels
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit


def cancel(rid: str, max_attempt: int = 0) -> events_pb2.Cancel:
    return events_pb2.Cancel(request_id=rid, reason="client_gone", max_attempt=max_attempt)


def test_a_cancel_covers_its_attempts_and_not_a_later_one():
    cancels = RecentCancels()
    cancels.record(cancel("a", max_attempt=1))
    assert cancels.covers("a", 0) and cancels.covers("a", 1)
    # The request migrated after the cancel of attempt 1: attempt 2 runs.
    assert not cancels.covers("a", 2)
    assert not cancels.covers("b", 0)


def test_a_later_cancel_of_an_earlier_attempt_does_not_uncover_a_later_one():
    cancels = RecentCancels()
    cancels.record(cancel("a", max_attempt=3))
    cancels.record(cancel("a", max_attempt=1))
    assert cancels.covers("a", 3)


def test_cancels_are_forgotten_after_their_time():
    cancels = RecentCancels(keep_s=-1.0)
    cancels.record(cancel("a"))
    assert not cancels.covers("a", 0)
    # And they do not pile up: recording drops what is past its time.
    for i in range(100):
        cancels.record(cancel(f"r{i}"))
    assert len(cancels) == 0

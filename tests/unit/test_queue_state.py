"""The scheduler's view of a queue: how fast it drains, and the Retry-After that follows."""

import pytest

from llmserve.scheduler.queues import QueueState

pytestmark = pytest.mark.unit


def test_drain_rate_turns_into_retry_after():
    state = QueueState()
    state.observe(depth=10, last_seq=10, by_subject={}, now=0.0)
    assert state.retry_after_s() == 5.0  # no rate known yet
    state.observe(depth=10, last_seq=12, by_subject={}, now=4.0)  # 2 jobs left the queue in 4 s
    assert state.retry_after_s() == 2.0
    state.observe(depth=10, last_seq=12, by_subject={}, now=8.0)  # nothing drained since
    assert 2.0 <= state.retry_after_s() <= 60.0

"""A liveness table that has just started listening does not yet claim that nobody is live."""

import asyncio
import time

import pytest

from llmserve.common.liveness import LivenessTable

pytestmark = pytest.mark.unit


async def test_settled_only_after_listening_for_a_beat_timeout():
    table = LivenessTable(dead_after_s=0.3)
    assert not table.settled()
    await asyncio.wait_for(table.wait_settled(), 1.0)  # not subscribed: nothing to wait for
    table.listening_since = time.monotonic()
    assert not table.settled()
    started = time.monotonic()
    await asyncio.wait_for(table.wait_settled(), 2.0)
    assert table.settled()
    assert time.monotonic() - started >= 0.25

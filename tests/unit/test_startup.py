"""The start-up gate: backoff bounds, readiness changes, giving up, and stopping mid-wait."""

import asyncio

import pytest

from llmserve.common.startup import Backoff, Readiness, ShutdownRequested, StartupGate, StartupTimeout


def test_backoff_doubles_up_to_its_cap_with_jitter_below_it():
    backoff = Backoff(first_s=0.5, max_s=4.0)
    for attempt, nominal in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.75 * nominal <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > 0.05 * nominal  # jittered, not in step
    assert backoff.delay(10_000) <= 4.0


def test_readiness_is_ready_only_when_nothing_blocks_and_tells_listeners_once_per_change():
    readiness = Readiness()
    seen: list[bool] = []
    readiness.listeners.append(seen.append)
    assert not readiness.ready and "starting" in readiness.reason
    readiness.block("nats", "waiting for nats://x")
    readiness.clear("starting")
    assert not readiness.ready and readiness.reason == "nats: waiting for nats://x"
    readiness.clear("nats")
    readiness.clear("nats")
    assert readiness.ready and readiness.reason == ""
    readiness.block("redis", "down")
    readiness.block("nats", "down")
    readiness.clear("redis")
    assert seen == [True, False]


async def test_gate_retries_until_the_dependency_answers():
    readiness = Readiness()
    readiness.clear("starting")
    gate = StartupGate(asyncio.Event(), readiness, backoff=Backoff(first_s=0.01, max_s=0.02))
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionRefusedError("refused")
        assert not readiness.ready  # blocked while waiting
        return "client"

    assert await gate.until_reachable("nats", "nats://x", attempt) == "client"
    assert calls == 4 and readiness.ready


async def test_gate_gives_up_after_the_startup_timeout():
    gate = StartupGate(asyncio.Event(), Readiness(), timeout_s=0.2, backoff=Backoff(first_s=0.05, max_s=0.05))

    async def attempt() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(StartupTimeout, match=r"redis at redis://x was not reachable within 0.2 s \(LLMSERVE_STARTUP_TIMEOUT_S\)"):
        await asyncio.wait_for(gate.until_reachable("redis", "redis://x", attempt), 5)


async def test_a_stop_signal_ends_a_wait_and_a_hanging_attempt_at_once():
    stop = asyncio.Event()
    gate = StartupGate(stop, Readiness(), backoff=Backoff(first_s=60, max_s=60))
    hung = asyncio.Event()
    cancelled = asyncio.Event()

    async def hanging() -> None:
        hung.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    waiting = asyncio.create_task(gate.until_reachable("nats", "nats://x", hanging))
    await asyncio.wait_for(hung.wait(), 5)
    stop.set()
    with pytest.raises(ShutdownRequested):
        await asyncio.wait_for(waiting, 1)
    assert cancelled.is_set()

    async def refused() -> None:
        raise ConnectionRefusedError("refused")

    # Already stopped: a backoff sleep of 60 s ends at once too.
    with pytest.raises(ShutdownRequested):
        await asyncio.wait_for(gate.until_reachable("nats", "nats://x", refused), 1)

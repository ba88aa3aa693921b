"""Running blocking work (imports, model loading) on a thread of its own, without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a thread that ends with it (asyncio.to_thread's threads live on).

    torch's OpenMP runtime keeps a team of worker threads for every thread that ran a parallel
    operation, for as long as that thread lives; with more such threads than cores it stops spinning at
    its barriers and sleeps instead, which made every decode step of the engine thread about twice as
    slow on a 2-core machine. Loading the model on a thread that exits leaves the engine thread's team
    the only one. The thread is a daemon: a signal that ends the process mid-load does not wait for it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=target, name="own-thread", daemon=True).start()
    return await done


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

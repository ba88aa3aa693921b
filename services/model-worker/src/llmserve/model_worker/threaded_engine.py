"""What every engine shares: a thread that runs torch, per-request output queues, cancel flags.

Subclasses implement `_run` (the engine thread's loop, reading `_inbox`) and may check a request
before it is accepted (`_check`). Outputs reach the event loop through `_emit` / `_flush_outbox`: one
hand-off per engine iteration, so the two threads do not trade the GIL once per sequence.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch

from llmserve.model_worker.engine import EngineOutput, EngineRequest
from llmserve.model_worker.sequence import Sequence

STOP = object()


class ThreadedEngine:
    def __init__(self, model: Any, tokenizer: Any, eos_ids: frozenset[int], device: torch.device) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._device = device
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._sequences: dict[str, Sequence] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[tuple[asyncio.Queue, EngineOutput]] = []
        # Newer transformers name the KV cache argument `cache`; older ones `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        for seq in list(self._sequences.values()):
            seq.cancelled = True
        self._inbox.put(STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def cancel(self, request_id: str) -> bool:
        seq = self._sequences.get(request_id)
        if seq is None:
            return False
        seq.cancelled = True  # read by the engine thread before its next step
        return True

    def _check(self, request: EngineRequest) -> None:
        """Raises ValueError for a request this engine can never run."""

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.request_id in self._sequences:
            raise ValueError(f"request {request.request_id} is already running")
        self._check(request)
        assert self._loop is not None, "engine not started"
        outputs: asyncio.Queue[EngineOutput] = asyncio.Queue()
        seq = Sequence(request, self._tokenizer, self._eos_ids)
        self._sequences[request.request_id] = seq
        self._inbox.put((seq, outputs))
        try:
            while True:
                out = await outputs.get()
                yield out
                if out.finished:
                    return
        finally:
            # The consumer went away (or finished): make sure the thread stops working on it.
            seq.cancelled = True

    def _forward_kwargs(self, cache: Any) -> dict[str, Any]:
        return {"use_cache": True, self._cache_arg: cache}

    def _emit(self, outputs: asyncio.Queue, out: EngineOutput) -> None:
        self._outbox.append((outputs, out))

    def _flush_outbox(self) -> None:
        if not self._outbox:
            return
        assert self._loop is not None
        batch, self._outbox = self._outbox, []
        self._loop.call_soon_threadsafe(_deliver, batch)

    def _run(self) -> None:
        raise NotImplementedError


def _deliver(batch: list[tuple[asyncio.Queue, EngineOutput]]) -> None:
    for outputs, out in batch:
        outputs.put_nowait(out)

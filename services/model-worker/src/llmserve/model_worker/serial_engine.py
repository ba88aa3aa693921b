"""An engine that runs one request at a time with its own decode loop and KV cache.

It is the reference the batching engine is checked against: simple, exact (greedy output equals
transformers' generate), and it stops a cancelled request at the next decode step.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

import structlog
import torch
from transformers import DynamicCache

from llmserve.model_worker.engine import EngineOutput, EngineRequest, EngineStats
from llmserve.model_worker.sequence import Sequence

log = structlog.get_logger()

_STOP = object()


class SerialEngine:
    def __init__(self, model: Any, tokenizer: Any, eos_ids: frozenset[int], device: torch.device) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._device = device
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._sequences: dict[str, Sequence] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Newer transformers name the KV cache argument `cache`; older ones `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        for seq in list(self._sequences.values()):
            seq.cancelled = True
        self._inbox.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def stats(self) -> EngineStats:
        return EngineStats(slots_total=1, slots_busy=len(self._sequences))

    def cancel(self, request_id: str) -> bool:
        seq = self._sequences.get(request_id)
        if seq is None:
            return False
        seq.cancelled = True  # read by the engine thread before its next step
        return True

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.request_id in self._sequences:
            raise ValueError(f"request {request.request_id} is already running")
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

    # -- engine thread ------------------------------------------------------------------------
    def _emit(self, outputs: asyncio.Queue[EngineOutput], out: EngineOutput) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(outputs.put_nowait, out)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            seq, outputs = item
            try:
                self._generate(seq, outputs)
            except Exception as exc:  # one failing request must not take the engine down
                log.exception("generation_failed", request_id=seq.request_id)
                self._emit(outputs, seq.error_output(f"{type(exc).__name__}: {exc}"))
            finally:
                self._sequences.pop(seq.request_id, None)

    @torch.inference_mode()
    def _generate(self, seq: Sequence, outputs: asyncio.Queue[EngineOutput]) -> None:
        cache = DynamicCache()
        input_ids = torch.tensor([seq.request.context_ids], dtype=torch.long, device=self._device)
        while True:
            if seq.cancelled:
                self._emit(outputs, seq.cancel_output())
                return
            logits = self._model(input_ids=input_ids, use_cache=True, **{self._cache_arg: cache}).logits[0, -1]
            token = seq.sample(logits)
            out = seq.append(token)
            self._emit(outputs, out)
            if out.finished:
                return
            input_ids = torch.tensor([[token]], dtype=torch.long, device=self._device)

"""An engine that runs one request at a time with its own decode loop and KV cache.

It is the reference the batching engine is checked against: simple, exact (greedy output equals
transformers' generate), and it stops a cancelled request at the next decode step.
"""

from __future__ import annotations

import asyncio
import sys

import structlog
import torch
from transformers import DynamicCache

from llmserve.model_worker.engine import EngineOutput, EngineStats
from llmserve.model_worker.sequence import Sequence
from llmserve.model_worker.threaded_engine import STOP, ThreadedEngine

log = structlog.get_logger()


class SerialEngine(ThreadedEngine):
    # No KV budget of its own (one request at a time): the model's context is the only bound.
    max_kv_tokens = sys.maxsize

    def stats(self) -> EngineStats:
        return EngineStats(slots_total=1, slots_busy=len(self._sequences))

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is STOP:
                return
            seq, outputs = item
            try:
                self._generate(seq, outputs)
            except Exception as exc:  # one failing request must not take the engine down
                log.exception("generation_failed", request_id=seq.request_id)
                self._emit(outputs, seq.error_output(f"{type(exc).__name__}: {exc}"))
            finally:
                self._sequences.pop(seq.request_id, None)
                self._flush_outbox()

    @torch.inference_mode()
    def _generate(self, seq: Sequence, outputs: asyncio.Queue[EngineOutput]) -> None:
        cache = DynamicCache()
        input_ids = torch.tensor([seq.request.context_ids], dtype=torch.long, device=self._device)
        while True:
            if seq.cancelled:
                self._emit(outputs, seq.cancel_output())
                return
            logits = self._model(input_ids=input_ids, **self._forward_kwargs(cache)).logits[0, -1]
            token = seq.sample(logits)
            out = seq.append(token)
            self._emit(outputs, out)
            self._flush_outbox()
            if out.finished:
                return
            input_ids = torch.tensor([[token]], dtype=torch.long, device=self._device)

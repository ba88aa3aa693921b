"""Continuous batching: sequences join and leave the running batch at every decode step.

One engine thread loops over iterations. Each iteration
  1. takes new requests and drops cancelled ones (their slot and KV memory are free at once),
  2. prefills waiting prompts, at most `prefill_chunk` prompt tokens per iteration, so a long prompt is
     prefilled over several iterations while the running batch keeps decoding,
  3. runs one decode step for every running sequence in a single forward pass, samples each row with
     its own settings, and releases the rows of the sequences that finished.

Admission is bounded by `max_running` sequences and by `max_kv_tokens`, the KV positions reserved for
prompt + max_tokens of every admitted sequence, so memory use is known before a request starts.
Waiting requests are admitted by priority level, first come first served within a level; an engine
that can preempt (the flat one, `_preempt_for`) makes room for a waiting request of a higher level.
"""

from __future__ import annotations

import asyncio
import queue
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch

from llmserve.model_worker import kv_batch
from llmserve.model_worker.engine import EngineRequest, EngineStats
from llmserve.model_worker.sequence import Sequence
from llmserve.model_worker.threaded_engine import STOP, ThreadedEngine

log = structlog.get_logger()

@dataclass
class _Pending:
    """A sequence being prefilled, with its own cache until it joins the batch."""

    seq: Sequence
    outputs: asyncio.Queue
    cache: Any = None
    offset: int = 0
    # The flat engine's: its KV lives in the staging row (prefilled chunk by chunk); keys and values
    # of its prefix found in the prefix cache, to be written into its row before its first segment.
    staged: bool = False
    restore: Any = None
    # A preempted sequence (the flat engine's): its row and kept keys and values (`parked`), or the tokens
    # it had generated, to be prefilled again after its prompt (`recompute`).
    parked: Any = None
    recompute: tuple[int, ...] | None = None

    @property
    def priority(self) -> int:
        return self.seq.request.priority


@dataclass
class _Row:
    seq: Sequence
    outputs: asyncio.Queue
    # Real tokens of this row in the batch cache.
    length: int
    # The token the next decode step feeds.
    next_token: int
    # Tokens of a migrated request still to be fed, one per decode step, before sampling resumes.
    forced: list[int] = field(default_factory=list)


@dataclass
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    cache: Any = None


class BatchingEngine(ThreadedEngine):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: frozenset[int],
        device: torch.device,
        max_running: int = 16,
        max_kv_tokens: int = 65536,
        prefill_chunk: int = 1024,
    ) -> None:
        super().__init__(model, tokenizer, eos_ids, device)
        self.max_running = max_running
        self.max_kv_tokens = max_kv_tokens
        self.prefill_chunk = prefill_chunk
        self._waiting: deque[_Pending] = deque()
        self._prefilling: deque[_Pending] = deque()
        self._batch = _Batch()
        self._reserved_kv = 0
        # Admissions so far: the next admitted sequence's age rank.
        self._admissions = 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self._pad_id = int(pad)

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=self.max_running, slots_busy=len(self._sequences), kv_reserved=self._reserved_kv, kv_capacity=self.max_kv_tokens
        )

    def _check(self, request: EngineRequest) -> None:
        need = len(request.prompt_ids) + request.sampling.max_tokens
        if need > self.max_kv_tokens:
            raise ValueError(f"request needs {need} KV positions; the engine has {self.max_kv_tokens}")

    # -- the engine thread ------------------------------------------------------------------
    def _finish(self, seq: Sequence) -> None:
        self._sequences.pop(seq.request_id, None)
        self._reserved_kv -= _reservation(seq)

    def _idle(self) -> bool:
        return not (self._waiting or self._prefilling or self._batch.rows)

    def _run(self) -> None:
        while True:
            try:
                item = self._inbox.get() if self._idle() else self._inbox.get_nowait()
            except queue.Empty:
                item = None
            while item is not None:
                if item is STOP:
                    return
                self._enqueue(_Pending(*item))
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            try:
                self._iteration()
            except Exception as exc:  # a failed step fails the requests in it, never the engine
                log.exception("engine_step_failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")
            self._flush_outbox()

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._prefill()
        # First tokens go out before the decode step starts, not one step later.
        self._flush_outbox()
        if self._batch.rows:
            self._decode()

    def _drop_cancelled(self) -> None:
        for pending_queue in (self._waiting, self._prefilling):
            for pending in [p for p in pending_queue if p.seq.cancelled]:
                pending_queue.remove(pending)
                self._emit(pending.outputs, pending.seq.cancel_output())
                if pending_queue is self._prefilling:
                    self._finish(pending.seq)
                else:
                    self._sequences.pop(pending.seq.request_id, None)
        cancelled = [i for i, row in enumerate(self._batch.rows) if row.seq.cancelled]
        for i in cancelled:
            row = self._batch.rows[i]
            self._emit(row.outputs, row.seq.cancel_output())
            self._finish(row.seq)
        if cancelled:
            self._release_rows(set(cancelled))

    def _enqueue(self, pending: _Pending, first_of_level: bool = False) -> None:
        """Adds a request to the waiting line behind every request of its level or higher (with
        first_of_level, ahead of the others of its level: a preempted sequence)."""
        level = pending.priority
        index = len(self._waiting)
        while index > 0:
            ahead = self._waiting[index - 1].priority
            if ahead > level or (ahead == level and not first_of_level):
                break
            index -= 1
        self._waiting.insert(index, pending)

    def _room(self, running: int, reserved: int, need: int) -> bool:
        """True when one more sequence reserving `need` KV positions fits beside `running` sequences
        that reserve `reserved`."""
        return running < self.max_running and reserved + need <= self.max_kv_tokens

    def _fits(self, need: int) -> bool:
        """True when one more sequence reserving `need` KV positions can be admitted now."""
        return self._room(len(self._batch.rows) + len(self._prefilling), self._reserved_kv, need)

    def _preempt_for(self, pending: _Pending, need: int) -> bool:
        """Makes room for `pending` by preempting running sequences of lower levels; True when it did.
        This engine never preempts."""
        return False

    def _admit(self) -> None:
        while self._waiting:
            head = self._waiting[0]
            need = _reservation(head.seq)
            if not self._fits(need) and not self._preempt_for(head, need):
                return
            # Still the head: a sequence preempted for it waits behind it (a lower level).
            self._waiting.popleft()
            self._reserved_kv += need
            if not head.seq.admitted:
                self._admissions += 1
                head.seq.admitted = self._admissions
            self._prefilling.append(head)

    def _forward(self, input_ids: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
        out = self._model(input_ids=input_ids, logits_to_keep=1, **self._forward_kwargs(cache), **kwargs)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def _prefill(self) -> None:
        """Prefills up to prefill_chunk prompt tokens: whole short prompts together in one padded forward
        pass (as a static batch would), a long one chunk by chunk on its own."""
        budget = self.prefill_chunk
        while budget > 0 and self._prefilling:
            head = self._prefilling[0]
            remaining = len(head.seq.request.context_ids) - head.offset
            if head.offset > 0 or remaining > budget:
                budget -= self._prefill_chunk_of(head, budget)
                continue
            group: list[_Pending] = []
            width = 0
            for pending in self._prefilling:
                length = len(pending.seq.request.context_ids)
                # Padding counts against the budget: every row is as wide as the longest prompt.
                if pending.offset > 0 or max(width, length) * (len(group) + 1) > budget:
                    break
                group.append(pending)
                width = max(width, length)
            for _ in group:
                self._prefilling.popleft()
            self._prefill_group(group)
            budget -= width * len(group)

    def _prefill_chunk_of(self, pending: _Pending, budget: int) -> int:
        prompt = pending.seq.request.context_ids
        if pending.cache is None:
            pending.cache = kv_batch.new_cache(self._model.config)
        chunk = prompt[pending.offset : pending.offset + budget]
        logits = self._forward(torch.tensor([chunk], dtype=torch.long, device=self._device), pending.cache)
        pending.offset += len(chunk)
        if pending.offset == len(prompt):
            self._prefilling.popleft()
            self._first_tokens([pending], logits, pending.cache)
        return len(chunk)

    def _prefill_group(self, group: list[_Pending]) -> None:
        prompts = [p.seq.request.context_ids for p in group]
        cache = kv_batch.new_cache(self._model.config)
        inputs = kv_batch.prefill_inputs(prompts, self._pad_id, self._device)
        logits = self._forward(inputs.pop("input_ids"), cache, **inputs)
        for p in group:
            p.offset = len(p.seq.request.context_ids)
        self._first_tokens(group, logits, cache)

    def _first_tokens(self, group: list[_Pending], logits: torch.Tensor, cache: Any) -> None:
        """Samples each prefilled sequence's first token; those that go on join the running batch."""
        joining: list[int] = []
        for i, pending in enumerate(group):
            token = pending.seq.sample(logits[i])
            out = pending.seq.append(token)
            self._emit(pending.outputs, out)
            if out.finished:
                self._finish(pending.seq)
                continue
            joining.append(i)
            self._batch.rows.append(_Row(pending.seq, pending.outputs, length=pending.offset, next_token=token))
        if not joining:
            return
        if len(joining) < len(group):
            kv_batch.keep_rows(cache, joining)
        if self._batch.cache is None:
            self._batch.cache = cache
            # Rows that joined together may all be shorter than the padded width.
            longest = max(r.length for r in self._batch.rows)
            kv_batch.drop_leading(cache, kv_batch.cache_length(cache) - longest)
        else:
            kv_batch.merge_rows(self._batch.cache, cache)

    @torch.inference_mode()
    def _decode(self) -> None:
        rows = self._batch.rows
        cache_len = kv_batch.cache_length(self._batch.cache)
        input_ids = torch.tensor([[r.next_token] for r in rows], dtype=torch.long, device=self._device)
        positions = torch.tensor([[r.length] for r in rows], dtype=torch.long, device=self._device)
        mask = kv_batch.decode_mask([r.length for r in rows], cache_len, self._device)
        logits = self._forward(input_ids, self._batch.cache, attention_mask=mask, position_ids=positions)
        # One transfer for every greedy row; only rows that really sample look at their own logits.
        argmax = logits.argmax(dim=-1).tolist()
        finished = set()
        for i, row in enumerate(rows):
            row.length += 1
            token = argmax[i] if row.seq.fast_greedy else row.seq.sample(logits[i])
            out = row.seq.append(token)
            self._emit(row.outputs, out)
            row.next_token = token
            if out.finished:
                self._finish(row.seq)
                finished.add(i)
        if finished:
            self._release_rows(finished)

    def _release_rows(self, indices: set[int]) -> None:
        """Removes rows from the batch and the padding no remaining row needs."""
        keep = [i for i in range(len(self._batch.rows)) if i not in indices]
        self._batch.rows = [self._batch.rows[i] for i in keep]
        if not keep:
            self._batch = _Batch()
            return
        kv_batch.keep_rows(self._batch.cache, keep)
        longest = max(r.length for r in self._batch.rows)
        kv_batch.drop_leading(self._batch.cache, kv_batch.cache_length(self._batch.cache) - longest)

    def _fail_all(self, error: str) -> None:
        for row in self._batch.rows:
            self._emit(row.outputs, row.seq.error_output(error))
            self._finish(row.seq)
        self._batch = _Batch()
        for pending in self._prefilling:
            self._emit(pending.outputs, pending.seq.error_output(error))
            self._finish(pending.seq)
        self._prefilling.clear()


def _reservation(seq: Sequence) -> int:
    # Resumed tokens count towards max_tokens, so they need no room of their own.
    return len(seq.request.prompt_ids) + seq.request.sampling.max_tokens

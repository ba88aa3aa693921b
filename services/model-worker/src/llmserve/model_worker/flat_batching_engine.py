"""Continuous batching on the flat decoder: every iteration is one forward pass over the weights.

Each iteration
  1. drops cancelled requests and admits waiting ones (as `BatchingEngine` does: `max_running`
     sequences, `max_kv_tokens` positions reserved for prompt + max_tokens),
  2. builds one list of segments: a one-token segment for every running row (row i of the KV cache is
     the batch's row i), then prompts, whole, up to `prefill_chunk` tokens; a prompt longer than what
     is left of that budget is prefilled chunk by chunk in a staging row of its own, one chunk per
     iteration, and nothing queues behind it in the same iteration,
  3. runs the decoder once on all of them and samples every row's next token (one argmax over the
     batch for greedy rows; rows with their own sampling settings sample from their own logits),
  4. compacts the cache: rows that finished are refilled by moving the last rows into their places
     (a copy of those rows' positions only), so the running rows are always rows 0 .. n-1.

A new prompt therefore joins the running batch without a pass of its own: its first token comes out
of the same forward pass as everyone else's next token. A prompt the prompt cache holds whole
(prompt_cache.py) needs no segment at all: its keys and values are copied into its row and its first
token sampled from the kept logits.

A migrated request (one that resumes after tokens generated elsewhere) is prefilled with its prompt
and the resumed tokens, except in int8 numerics, where only the prompt is prefilled and the resumed
tokens are fed back one decode step each (`replay_resumed`). Prefill and decode compute attention with
different kernels, whose last bits differ; int8 activations can turn such a difference into another
quantization step, so only recomputing the same steps gives the same tokens as an undisturbed run.
It costs one step per resumed token instead of a share of one prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmserve.model_worker.batching_engine import BatchingEngine, _Batch, _Pending, _Row
from llmserve.model_worker.llama_decoder import LlamaDecoder, Segment
from llmserve.model_worker.prompt_cache import CachedPrompt, PromptCache


@dataclass(frozen=True)
class _Twin:
    """A prompt identical to one prefilled in the same pass (the choices of an n > 1 request): it
    takes a copy of that row's keys and values and that row's logits instead of a segment."""

    row: int


# A prompt that completes its prefill this iteration: its cache row, and what the prompt cache kept of
# it when its whole prompt was there, or the row of its twin (then it needs no segment).
_Joining = tuple[_Pending, int, CachedPrompt | _Twin | None]


class FlatBatchingEngine(BatchingEngine):
    def __init__(
        self,
        decoder: LlamaDecoder,
        tokenizer: Any,
        eos_ids: frozenset[int],
        device: torch.device,
        max_running: int = 16,
        max_kv_tokens: int = 65536,
        prefill_chunk: int = 512,
        prompt_cache_bytes: int = 0,
    ) -> None:
        super().__init__(decoder, tokenizer, eos_ids, device, max_running, max_kv_tokens, prefill_chunk)
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        # One row per running sequence, and the staging row for a prompt prefilled chunk by chunk.
        self._staging = max_running
        self._cache = decoder.new_cache(rows=max_running + 1)
        self._staged: _Pending | None = None
        self.replay_resumed = decoder.numerics == "int8"

    def _context(self, pending: _Pending) -> tuple[int, ...]:
        """The tokens prefilled for a sequence (see replay_resumed)."""
        request = pending.seq.request
        return request.prompt_ids if self.replay_resumed else request.context_ids

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        if not (self._batch.rows or self._prefilling):
            self._cache.release(0)
            return
        rows = self._batch.rows
        segments = [Segment(i, r.length, [r.next_token]) for i, r in enumerate(rows)]
        joining = self._plan_prefill(segments, first_row=len(rows))
        longest = max([s.start + len(s.tokens) for s in segments] + [c.kv.shape[3] for _, _, c in joining if isinstance(c, CachedPrompt)])
        self._cache.ensure(self._staging + 1 if self._staged is not None else len(rows) + len(joining), longest)
        for _, cache_row, cached in joining:
            if isinstance(cached, CachedPrompt):
                self._cache.write_prefix(cache_row, cached.kv)
        logits = self._model.forward(segments, self._cache) if segments else None
        for pending, cache_row, twin in joining:
            if isinstance(twin, _Twin):
                self._cache.write_prefix(cache_row, self._cache.prefix(twin.row, pending.offset))
        self._advance(logits, joining)

    def _plan_prefill(self, segments: list[Segment], first_row: int) -> list[_Joining]:
        """Appends prompt segments within the budget; returns the prompts that complete this iteration
        with the cache row each was prefilled into (or is restored into from the prompt cache)."""
        budget = self.prefill_chunk
        joining: list[_Joining] = []
        # Rows of the whole prompts prefilled in this pass, by their tokens.
        prefilled: dict[tuple[int, ...], int] = {}
        row = first_row
        while self._prefilling and (budget > 0 or tuple(self._context(self._prefilling[0])) in prefilled):
            head = self._prefilling[0]
            context = self._context(head)
            remaining = len(context) - head.offset
            twin = prefilled.get(tuple(context)) if head.offset == 0 else None
            if twin is not None:
                self._prefilling.popleft()
                head.offset = len(context)
                joining.append((head, row, _Twin(twin)))
                row += 1
                continue
            cached = self.prompt_cache.get(tuple(context)) if self.prompt_cache is not None and head.offset == 0 else None
            if cached is not None:
                self._prefilling.popleft()
                head.offset = len(context)
                joining.append((head, row, cached))
                row += 1
                continue
            if head.offset == 0 and remaining <= budget:
                self._prefilling.popleft()
                segments.append(Segment(row, 0, list(context)))
                head.offset = len(context)
                joining.append((head, row, None))
                prefilled[tuple(context)] = row
                row += 1
                budget -= remaining
                continue
            # Too long for what is left: prefill it in chunks in the staging row.
            n = min(remaining, budget)
            done = n == remaining
            segments.append(Segment(self._staging, head.offset, list(context[head.offset : head.offset + n]), logits=done))
            head.offset += n
            self._staged = head
            if done:
                self._prefilling.popleft()
                joining.append((head, self._staging, None))
            break
        return joining

    def _advance(self, logits: torch.Tensor | None, joining: list[_Joining]) -> None:
        rows = self._batch.rows
        # One transfer for every greedy row; only rows that really sample look at their own logits.
        argmax = logits.argmax(dim=-1).tolist() if logits is not None else []
        survivors: dict[int, _Row] = {}
        for i, row in enumerate(rows):
            row.length += 1
            if row.forced:
                row.next_token = row.forced.pop(0)
                survivors[i] = row
                continue
            token = self._next_token(row.seq, logits, argmax, i)
            out = row.seq.append(token)
            self._emit(row.outputs, out)
            row.next_token = token
            if out.finished:
                self._finish(row.seq)
            else:
                survivors[i] = row
        # Logits rows of the prompts prefilled in this pass follow the running rows'.
        index = len(rows)
        logits_of_row: dict[int, int] = {}
        for pending, cache_row, cached in joining:
            if cache_row == self._staging:
                self._staged = None
            if cached is None:
                row_logits, row_argmax, j = logits, argmax, index
                logits_of_row[cache_row] = index
                index += 1
                if self.prompt_cache is not None:
                    self.prompt_cache.put(tuple(self._context(pending)), self._cache.prefix(cache_row, pending.offset), logits[j])
            elif isinstance(cached, _Twin):
                row_logits, row_argmax, j = logits, argmax, logits_of_row[cached.row]
            else:
                row_logits, row_argmax, j = cached.logits.unsqueeze(0), [cached.argmax], 0
            resumed = list(pending.seq.request.resume_ids) if self.replay_resumed else []
            if resumed:
                row = _Row(pending.seq, pending.outputs, length=pending.offset, next_token=resumed[0], forced=resumed[1:])
                survivors[cache_row] = row
                continue
            token = self._next_token(pending.seq, row_logits, row_argmax, j)
            out = pending.seq.append(token)
            self._emit(pending.outputs, out)
            if out.finished:
                self._finish(pending.seq)
            else:
                survivors[cache_row] = _Row(pending.seq, pending.outputs, length=pending.offset, next_token=token)
        self._compact(survivors)

    @staticmethod
    def _next_token(seq: Any, logits: torch.Tensor, argmax: list[int], i: int) -> int:
        return argmax[i] if seq.fast_greedy else seq.sample(logits[i])

    def _compact(self, survivors: dict[int, _Row]) -> None:
        """Running rows become cache rows 0 .. n-1: rows past n move into the holes below n."""
        n = len(survivors)
        holes = [r for r in range(n) if r not in survivors]
        movers = sorted(r for r in survivors if r >= n)
        for src, dst in zip(movers, holes, strict=True):
            self._cache.move(src, dst, survivors[src].length)
            survivors[dst] = survivors.pop(src)
        self._batch.rows = [survivors[r] for r in range(n)]
        self._cache.release(n if self._staged is None else self._staging + 1)

    def _release_rows(self, indices: set[int]) -> None:
        self._compact({i: row for i, row in enumerate(self._batch.rows) if i not in indices})

    def _drop_cancelled(self) -> None:
        staged = self._staged
        super()._drop_cancelled()
        if staged is not None and staged not in self._prefilling:
            self._staged = None

    def _fail_all(self, error: str) -> None:
        super()._fail_all(error)
        self._staged = None
        self._batch = _Batch()
        self._cache.release(0)

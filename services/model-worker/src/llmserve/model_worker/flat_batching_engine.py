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

Preemption by priority. When the first waiting request cannot be admitted (every slot taken, or the KV
budget reserved) and running rows of lower levels can make room, the youngest rows of the lowest level
are preempted at this iteration's start, before its pass is planned: a `high` request then prefills in
this very pass. A preempted sequence keeps its output queue and sampling state and waits ahead of its
own level; nothing is sent to its client meanwhile. Its keys and values are
  - kept (a copy of its row) when the KV budget's memory still holds them: the positions kept for all
    preempted sequences plus those reserved by admitted ones stay within `max_kv_tokens`. Resuming
    copies the row back, and the sequence goes on exactly where it stopped;
  - otherwise dropped, and recomputed when it is admitted again: its prompt and every token it had
    generated are prefilled as a migrated request's are (the prompt's blocks from the prefix cache
    when they are still there; in int8 numerics replayed a step each), so greedy output is the same.
A sequence is preempted at most `max_preemptions` times, only by a strictly higher level (so `low`
never preempts `low`), and only rows in the running batch are (a prompt being prefilled finishes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
import torch

from llmserve.model_worker import metrics
from llmserve.model_worker.batching_engine import BatchingEngine, _Batch, _Pending, _reservation, _Row
from llmserve.model_worker.llama_decoder import LlamaDecoder, Segment
from llmserve.model_worker.prefix_cache import BLOCK, PrefixCache
from llmserve.model_worker.prompt_cache import CachedPrompt, PromptCache


def block_segments(row: int, start: int, tokens: tuple[int, ...] | list[int], logits: bool = True) -> list[Segment]:
    """Prompt segments for `tokens` at positions start.., split at multiples of BLOCK; the last one
    returns logits when `logits` is set."""
    out = []
    position, index = start, 0
    while index < len(tokens):
        n = min(len(tokens) - index, BLOCK - position % BLOCK)
        out.append(Segment(row, position, list(tokens[index : index + n]), logits=False, prompt=True))
        position += n
        index += n
    if out and logits:
        out[-1].logits = True
    return out


log = structlog.get_logger()


@dataclass(frozen=True)
class _Parked:
    """A preempted running row and a copy of its keys and values ([layers, 2, kv_heads, length, head_dim])."""

    row: _Row
    kv: torch.Tensor


@dataclass(frozen=True)
class _Twin:
    """A prompt identical to one prefilled in the same pass (the choices of an n > 1 request): it
    takes a copy of that row's keys and values and that row's logits instead of a segment."""

    row: int


# A prompt that completes its prefill this iteration: its cache row, and what the prompt cache kept of
# it when its whole prompt was there, or the row of its twin, or the preempted row it resumes (then it
# needs no segment).
_Joining = tuple[_Pending, int, CachedPrompt | _Twin | _Parked | None]


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
        prefix_cache_share: float = 0.0,
        max_preemptions: int = 0,
    ) -> None:
        # A chunk of a long prompt ends at a block boundary: at least one block per iteration.
        super().__init__(decoder, tokenizer, eos_ids, device, max_running, max_kv_tokens, max(prefill_chunk, BLOCK))
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        # One row per running sequence, and the staging row for a prompt prefilled chunk by chunk.
        self._staging = max_running
        self._cache = decoder.new_cache(rows=max_running + 1)
        # Prefix blocks may take this share of the memory the KV budget stands for.
        prefix_bytes = int(prefix_cache_share * max_kv_tokens * self._cache.nbytes_per_position())
        self.prefix_cache = PrefixCache(prefix_bytes) if prefix_bytes > 0 else None
        self._staged: _Pending | None = None
        self.replay_resumed = decoder.numerics == "int8"
        # How often one sequence may be preempted (0: never), and the positions kept for preempted ones.
        self.max_preemptions = max_preemptions
        self._kept_positions = 0

    @staticmethod
    def _resumed(pending: _Pending) -> tuple[int, ...]:
        """Tokens a sequence had generated before it came here (migrated) or before it was preempted."""
        return pending.recompute if pending.recompute is not None else pending.seq.request.resume_ids

    def _context(self, pending: _Pending) -> tuple[int, ...]:
        """The tokens prefilled for a sequence (see replay_resumed)."""
        prompt = pending.seq.request.prompt_ids
        return prompt if self.replay_resumed else prompt + self._resumed(pending)

    # -- preemption -----------------------------------------------------------------------------
    def preemptible_level(self) -> int | None:
        """The level a new request must be above to preempt a running sequence now; None when none may
        be preempted or a request is already waiting for room. Read from the event loop's thread: a hint
        for taking jobs while every slot is busy, which the engine thread checks again at admission."""
        if self.max_preemptions <= 0 or any(p.parked is None and p.recompute is None for p in tuple(self._waiting)):
            return None
        levels = [r.seq.request.priority for r in tuple(self._batch.rows) if r.seq.preemptions < self.max_preemptions]
        return min(levels, default=None)

    def _preempt_for(self, pending: _Pending, need: int) -> bool:
        rows = self._batch.rows
        level = pending.priority
        candidates = sorted(
            (i for i, r in enumerate(rows) if r.seq.request.priority < level and r.seq.preemptions < self.max_preemptions and not r.seq.cancelled),
            key=lambda i: (rows[i].seq.request.priority, -rows[i].seq.admitted),
        )
        running = len(rows) + len(self._prefilling)
        cause = "slots" if running >= self.max_running else "kv_budget"
        reserved = self._reserved_kv
        chosen: list[int] = []
        for i in candidates:
            if self._room(running, reserved, need):
                break
            chosen.append(i)
            running -= 1
            reserved -= _reservation(rows[i].seq)
        if not chosen or not self._room(running, reserved, need):
            return False
        for i in chosen:
            self._park(i, need, cause, pending)
        self._release_rows(set(chosen))
        return True

    def _park(self, i: int, need: int, cause: str, by: _Pending) -> None:
        """Takes running row i out of the batch into the waiting line, ahead of its level."""
        row = self._batch.rows[i]
        seq = row.seq
        seq.preemptions += 1
        self._reserved_kv -= _reservation(seq)
        # Kept while the budget's memory holds it next to what is reserved once `by` is admitted.
        keep = self._kept_positions + row.length + self._reserved_kv + need <= self.max_kv_tokens
        parked = recompute = None
        if keep:
            parked = _Parked(row, self._cache.prefix(i, row.length).clone())
            self._kept_positions += row.length
        else:
            recompute = tuple(seq.generated)
        self._enqueue(_Pending(seq, row.outputs, parked=parked, recompute=recompute), first_of_level=True)
        resume = "kept" if keep else "recompute"
        metrics.PREEMPTIONS.labels(cause=cause, resume=resume).inc()
        log.info("sequence_preempted", request_id=seq.request_id, priority=seq.request.priority, by=by.seq.request_id,
                 by_priority=by.priority, cause=cause, resume=resume, positions=row.length, preemptions=seq.preemptions)

    def _unpark(self, pending: _Pending) -> None:
        if pending.parked is not None:
            self._kept_positions -= pending.parked.row.length
            pending.parked = None

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        if not (self._batch.rows or self._prefilling):
            self._cache.release(0)
            return
        rows = self._batch.rows
        segments = [Segment(i, r.length, [r.next_token]) for i, r in enumerate(rows)]
        restores: list[tuple[int, torch.Tensor]] = []
        joining = self._plan_prefill(segments, restores, first_row=len(rows))
        copied = [(cache_row, c.kv) for _, cache_row, c in joining if isinstance(c, CachedPrompt | _Parked)]
        longest = max([s.start + len(s.tokens) for s in segments] + [kv.shape[3] for _, kv in copied])
        self._cache.ensure(self._staging + 1 if self._staged is not None else len(rows) + len(joining), longest)
        for cache_row, kv in copied:
            self._cache.write_prefix(cache_row, kv)
        for cache_row, kv in restores:
            self._cache.write_prefix(cache_row, kv)
        logits = self._model.forward(segments, self._cache) if segments else None
        for pending, cache_row, twin in joining:
            if isinstance(twin, _Twin):
                self._cache.write_prefix(cache_row, self._cache.prefix(twin.row, pending.offset))
        self._advance(logits, joining)

    def _plan_prefill(self, segments: list[Segment], restores: list[tuple[int, torch.Tensor]], first_row: int) -> list[_Joining]:
        """Appends prompt segments within the budget; returns the prompts that complete this iteration
        with the cache row each was prefilled into (or is restored into from the prompt cache), and
        adds to `restores` the prefixes found in the prefix cache, with the rows they go into.

        Every prompt is prefilled in segments that end at multiples of BLOCK (prefix_cache.py), and a
        chunk of a long prompt ends at one too: block k of a prompt is always computed the same way,
        whether the blocks before it were computed in this pass, in earlier ones, or restored."""
        budget = self.prefill_chunk
        joining: list[_Joining] = []
        # Rows of the whole prompts prefilled in this pass, by their tokens.
        prefilled: dict[tuple[int, ...], int] = {}
        row = first_row
        while self._prefilling:
            head = self._prefilling[0]
            if head.parked is not None:
                # A preempted row coming back: its keys and values are copied in, no segment.
                self._prefilling.popleft()
                joining.append((head, row, head.parked))
                row += 1
                continue
            context = self._context(head)
            key = tuple(context)
            fresh = head.offset == 0 and not head.staged
            if fresh and key in prefilled:
                self._prefilling.popleft()
                head.offset = len(context)
                joining.append((head, row, _Twin(prefilled[key])))
                row += 1
                continue
            if budget <= 0:
                break
            cached = self.prompt_cache.get(key) if self.prompt_cache is not None and fresh else None
            if cached is not None:
                self._prefilling.popleft()
                head.offset = len(context)
                joining.append((head, row, cached))
                row += 1
                continue
            if fresh and self.prefix_cache is not None:
                head.restore = self.prefix_cache.longest(context)
                metrics.PREFIX_QUERIED_TOKENS.inc(len(context))
                if head.restore is not None:
                    head.offset = head.restore.shape[3]
                    metrics.PREFIX_HIT_TOKENS.inc(head.offset)
            remaining = len(context) - head.offset
            if not head.staged and remaining <= budget:
                # The whole (rest of the) prompt in this pass, in a row of its own.
                self._prefilling.popleft()
                self._restore(head, row, restores)
                segments.extend(block_segments(row, head.offset, context[head.offset :]))
                if fresh:
                    prefilled[key] = row
                head.offset = len(context)
                joining.append((head, row, None))
                row += 1
                budget -= remaining
                continue
            # Too long for what is left: a chunk in the staging row, ending at a block boundary.
            end = head.offset + min(remaining, budget)
            if end < len(context):
                end -= end % BLOCK
            if end <= head.offset:
                break  # not a whole block left in this pass's budget
            self._restore(head, self._staging, restores)
            done = end == len(context)
            segments.extend(block_segments(self._staging, head.offset, context[head.offset : end], logits=done))
            head.offset = end
            head.staged = True
            self._staged = head
            if done:
                self._prefilling.popleft()
                joining.append((head, self._staging, None))
            break
        return joining

    @staticmethod
    def _restore(head: _Pending, row: int, restores: list[tuple[int, torch.Tensor]]) -> None:
        """The prefix found in the prefix cache goes into the row the prompt's segments use."""
        if head.restore is not None:
            restores.append((row, head.restore))
            head.restore = None

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
            if isinstance(cached, _Parked):
                survivors[cache_row] = cached.row
                self._unpark(pending)
                continue
            if cached is None:
                row_logits, row_argmax, j = logits, argmax, index
                logits_of_row[cache_row] = index
                index += 1
                if self.prompt_cache is not None and pending.recompute is None:
                    self.prompt_cache.put(tuple(self._context(pending)), self._cache.prefix(cache_row, pending.offset), logits[j])
                if self.prefix_cache is not None:
                    self.prefix_cache.put(self._context(pending), self._cache.prefix(cache_row, pending.offset))
            elif isinstance(cached, _Twin):
                row_logits, row_argmax, j = logits, argmax, logits_of_row[cached.row]
            else:
                row_logits, row_argmax, j = cached.logits.unsqueeze(0), [cached.argmax], 0
            resumed = list(self._resumed(pending)) if self.replay_resumed else []
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
        for pending in (*self._waiting, *self._prefilling):
            if pending.seq.cancelled:
                self._unpark(pending)
        staged = self._staged
        super()._drop_cancelled()
        if staged is not None and staged not in self._prefilling:
            self._staged = None

    def _fail_all(self, error: str) -> None:
        for pending in self._prefilling:
            self._unpark(pending)
        super()._fail_all(error)
        self._staged = None
        self._batch = _Batch()
        self._cache.release(0)

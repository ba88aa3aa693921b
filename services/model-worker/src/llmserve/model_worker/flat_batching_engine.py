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

from llmserve.model_worker import metrics
from llmserve.model_worker.batching_engine import BatchingEngine, _Batch, _Pending, _Row
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
        prefix_cache_share: float = 0.0,
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
        restores: list[tuple[int, torch.Tensor]] = []
        joining = self._plan_prefill(segments, restores, first_row=len(rows))
        longest = max([s.start + len(s.tokens) for s in segments] + [c.kv.shape[3] for _, _, c in joining if isinstance(c, CachedPrompt)])
        self._cache.ensure(self._staging + 1 if self._staged is not None else len(rows) + len(joining), longest)
        for _, cache_row, cached in joining:
            if isinstance(cached, CachedPrompt):
                self._cache.write_prefix(cache_row, cached.kv)
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
            if cached is None:
                row_logits, row_argmax, j = logits, argmax, index
                logits_of_row[cache_row] = index
                index += 1
                if self.prompt_cache is not None:
                    self.prompt_cache.put(tuple(self._context(pending)), self._cache.prefix(cache_row, pending.offset), logits[j])
                if self.prefix_cache is not None:
                    self.prefix_cache.put(self._context(pending), self._cache.prefix(cache_row, pending.offset))
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

"""Constrained decoding: a request's output must match a JSON Schema, any JSON object, a regex or a grammar.

Built on llguidance (the grammar engine vLLM, SGLang and llama.cpp use): it computes the set of tokens
that may come next in tens of microseconds from the tokenizer's token trie and an Earley parser,
without compiling a whole-vocabulary automaton per schema first, so a new schema costs nothing up
front; it handles JSON Schema, regexes and Lark grammars; and its wheel is self-contained (no torch
build to match). A row that is constrained gets its mask applied to its own logits each step, so
constrained and free rows share one batch; a free row never pays for it.

Grammars come from `llmserve.common.grammars` (the router checks them with the same code).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import llguidance
import torch


class ConstraintCompiler:
    """One model's llguidance tokenizer, and a matcher per grammar (least recently used dropped first);
    every request starts from a copy of its grammar's matcher."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], cache_size: int = 128) -> None:
        self._hf_tokenizer = tokenizer
        self._eos_ids = sorted(eos_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._matchers: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        # Requests are prepared on the event loop and started on the engine thread.
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:  # about 0.7 s for a 49k vocabulary: only once a constraint is used
            import llguidance.hf

            self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, eos_token=self._eos_ids or None)
        return self._tokenizer

    def start(self, grammar: str) -> ConstrainedOutput:
        """A fresh decoding state for the grammar; ValueError when the grammar is not usable."""
        with self._lock:
            matcher = self._matchers.get(grammar)
            if matcher is None:
                matcher = llguidance.LLMatcher(self._llg_tokenizer(), grammar)
                if matcher.is_error():
                    raise ValueError(matcher.get_error())
                self._matchers[grammar] = matcher
                while len(self._matchers) > self._cache_size:
                    self._matchers.popitem(last=False)
            else:
                self._matchers.move_to_end(grammar)
            return ConstrainedOutput(matcher.deep_copy(), self._tokenizer.vocab_size)


class ConstrainedOutput:
    """One request's position in its grammar: which tokens may come next, and the tokens taken."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        # Imported on first use: llguidance.torch pulls in torch's compiler stack (seconds at start-up).
        import llguidance.torch

        self._llgt = llguidance.torch
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bitmask = self._llgt.allocate_token_bitmask(1, vocab_size)

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more (only end-of-sequence is left)."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of the 1-D logits with every token the grammar forbids at -inf."""
        self._llgt.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        masked = logits.clone().unsqueeze(0)
        if masked.shape[-1] > self._vocab_size:  # padding columns past the tokenizer's vocabulary
            masked[:, self._vocab_size :] = float("-inf")
        self._llgt.apply_token_bitmask_inplace(masked[:, : self._vocab_size], self._bitmask)
        return masked[0]

    def take(self, token_id: int) -> None:
        """Advances past a token (sampled under the mask, or resumed after a migration)."""
        if not self._matcher.consume_token(token_id):
            raise ValueError(f"token {token_id} does not fit the output's grammar: {self._matcher.get_error()}")

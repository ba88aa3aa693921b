"""Prompts seen before, kept with what prefilling them produced: their keys and values and the logits
after their last token. A request whose whole prompt is in the cache skips its prefill and samples its
first token from the kept logits, so it starts in the next step.

Only whole prompts match, and what is restored is exactly what the prefill computed, so a request's
tokens are the same whether its prompt was cached or not (tested): a partial prefix would need its
remaining tokens computed against cached keys and values, which differs in the last bits from one
prefill of the whole prompt, and in int8 numerics a last bit can become another token.

Entries are evicted least recently used first, within a byte budget (LLMSERVE_WORKER_PROMPT_CACHE_MB).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedPrompt:
    # Keys and values of the prompt's positions: [layers, 2, kv_heads, positions, head_dim].
    kv: torch.Tensor
    # Logits after the prompt's last token: [vocab].
    logits: torch.Tensor
    # Their argmax (the greedy first token), computed once.
    argmax: int

    @property
    def nbytes(self) -> int:
        return _nbytes(self.kv, self.logits)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class PromptCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: tuple[int, ...]) -> CachedPrompt | None:
        entry = self._entries.get(prompt)
        if entry is not None:
            self._entries.move_to_end(prompt)
            self.hits += 1
        return entry

    def put(self, prompt: tuple[int, ...], kv: torch.Tensor, logits: torch.Tensor) -> None:
        """Keeps copies of kv and logits (the caller's tensors are views of buffers that change)."""
        size = _nbytes(kv, logits)
        if prompt in self._entries or size > self.max_bytes:
            return
        while self.nbytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
        self._entries[prompt] = CachedPrompt(kv.clone(), logits.detach().float().clone(), int(logits.argmax()))
        self.nbytes += size

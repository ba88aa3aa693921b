"""Keys and values of prompt prefixes, kept in blocks after a request's prefill and reused by any later
prompt that starts with the same tokens (the next turn of a conversation, a shared system prompt).

A block is `BLOCK` positions; it is named by a hash of its tokens chained with the name of the block
before it, so a block only matches after the same whole prefix. Reuse gives the same numbers as
computing: the flat engine prefills every prompt in segments that end at block boundaries, so block k
of a prompt is always one segment at positions kB .. kB+B-1 over the blocks before it, whether those
came from this cache or were computed a moment earlier in the same pass (and a row's numbers never
depend on the other rows of the pass). Greedy output with a hit is therefore identical to without
(tested).

Blocks are evicted least recently used first, within a byte budget (LLMSERVE_WORKER_PREFIX_CACHE_MB).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

import torch

# Positions per block: a prompt's prefill segments end at multiples of this.
BLOCK = 64


def block_names(tokens: tuple[int, ...] | list[int], blocks: int) -> list[bytes]:
    """Names of the first `blocks` full blocks of `tokens`, each chained to the ones before it."""
    names: list[bytes] = []
    previous = b""
    for k in range(blocks):
        digest = hashlib.blake2b(previous, digest_size=16)
        digest.update(array("l", tokens[k * BLOCK : (k + 1) * BLOCK]).tobytes())
        previous = digest.digest()
        names.append(previous)
    return names


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        # Prompt tokens asked about, and of those, found in the cache (for the hit ratio).
        self.queried_tokens = 0
        self.hit_tokens = 0
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def longest(self, tokens: tuple[int, ...] | list[int]) -> torch.Tensor | None:
        """The keys and values of the longest cached prefix of `tokens` in whole blocks, leaving at least
        one token to compute (its logits give the first token): [layers, 2, kv_heads, k * BLOCK, head_dim]."""
        usable = (len(tokens) - 1) // BLOCK
        self.queried_tokens += len(tokens)
        found: list[tuple[bytes, torch.Tensor]] = []
        for name in block_names(tokens, usable):
            block = self._blocks.get(name)
            if block is None:
                break
            found.append((name, block))
        if not found:
            return None
        self._touch([name for name, _ in found])
        self.hit_tokens += len(found) * BLOCK
        return torch.cat([block for _, block in found], dim=3)

    def _touch(self, chain: list[bytes]) -> None:
        """Marks a chain's blocks used, its first block last: a prefix's head is evicted after its
        tail, so the cache never keeps blocks that can no longer be reached."""
        for name in reversed(chain):
            if name in self._blocks:  # a block put earlier in this call may have been evicted by a later one
                self._blocks.move_to_end(name)

    def holds(self, name: bytes) -> bool:
        """Whether the block named `name` is cached (read from any thread: a dict lookup)."""
        return name in self._blocks

    def put(self, tokens: tuple[int, ...] | list[int], kv: torch.Tensor) -> None:
        """Keeps copies of the full blocks of a prefilled prompt not cached yet; `kv` holds its positions
        (a view of the engine's cache row, [layers, 2, kv_heads, positions, head_dim])."""
        blocks = min(len(tokens), kv.shape[3]) // BLOCK
        names = block_names(tokens, blocks)
        kept: list[bytes] = []
        for k, name in enumerate(names):
            if name in self._blocks:
                kept.append(name)
                continue
            block = kv[:, :, :, k * BLOCK : (k + 1) * BLOCK].clone()
            size = block.numel() * block.element_size()
            if size > self.max_bytes:
                break
            while self.nbytes + size > self.max_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self.nbytes -= evicted.numel() * evicted.element_size()
            self._blocks[name] = block
            self.nbytes += size
            kept.append(name)
        self._touch(kept)

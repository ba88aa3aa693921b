"""What a worker tells the schedulers about its prefix cache: the prefix keys of prompts it holds.

For each job it prefilled, the worker remembers the job's prefix keys (common/prefix_keys.py) with the
name of the last whole block of the job's prompt in its prefix cache. A key is announced in heartbeats
while that block is still cached (a chain's head is evicted after its tail, so the whole prompt's
blocks are there too). The newest `capacity` keys are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from llmserve.model_worker.prefix_cache import BLOCK, PrefixCache, block_names


class PrefixAnnouncer:
    def __init__(self, cache: PrefixCache | None, capacity: int = 1024) -> None:
        self._cache = cache
        self._capacity = capacity
        # Prefix key -> the name of the last whole block of the prompt it was seen with.
        self._keys: OrderedDict[int, bytes] = OrderedDict()

    def add(self, keys: Sequence[int], prompt_ids: Sequence[int]) -> bool:
        """Remembers a prefilled prompt's keys; True when one of them was not announced before."""
        blocks = len(prompt_ids) // BLOCK
        if self._cache is None or not keys or blocks == 0:
            return False
        tail = block_names(prompt_ids, blocks)[-1]
        new = False
        for key in keys:
            new = new or key not in self._keys
            self._keys[key] = tail
            self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return new

    def held(self) -> list[int]:
        """The keys whose prompts' blocks are still in the prefix cache."""
        if self._cache is None:
            return []
        return [key for key, tail in self._keys.items() if self._cache.holds(tail)]

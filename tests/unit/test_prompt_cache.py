"""The prompt cache keeps copies, evicts the least recently used within its budget, skips what never fits."""

import pytest
import torch

from llmserve.model_worker.prompt_cache import PromptCache

pytestmark = pytest.mark.unit


def kv(positions: int) -> torch.Tensor:
    return torch.ones(2, 2, 1, positions, 4, dtype=torch.float16)  # 32 bytes per position


def test_lru_within_budget_and_copies():
    logits = torch.tensor([0.1, 3.0, -1.0])  # 12 bytes
    cache = PromptCache(max_bytes=2 * (32 * 4 + 12))
    source = kv(4)
    cache.put((1, 2), source, logits)
    source.zero_()  # the caller's buffer changes; the entry must not
    cache.put((3,), kv(4), logits)
    assert cache.get((1, 2)).kv.sum() == 2 * 2 * 4 * 4
    assert cache.get((1, 2)).argmax == 1
    cache.put((5,), kv(4), logits)  # evicts (3,), used least recently
    assert cache.get((3,)) is None and cache.get((1, 2)) is not None and cache.get((5,)) is not None
    assert cache.nbytes <= cache.max_bytes and len(cache) == 2
    assert cache.hits == 4


def test_an_entry_larger_than_the_budget_is_not_kept():
    cache = PromptCache(max_bytes=100)
    cache.put((1,), kv(8), torch.zeros(3))
    assert len(cache) == 0 and cache.nbytes == 0

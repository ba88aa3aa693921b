"""The prefix cache's bookkeeping: chained block names, the longest cached prefix, LRU within bytes."""

import pytest
import torch

from llmserve.model_worker.prefix_cache import BLOCK, PrefixCache, block_names

pytestmark = pytest.mark.unit


def kv_for(tokens: list[int]) -> torch.Tensor:
    # [layers=2, 2, kv_heads=1, positions, head_dim=2], each position holding its token id.
    t = torch.tensor(tokens, dtype=torch.float16)
    return t.view(1, 1, 1, -1, 1).expand(2, 2, 1, len(tokens), 2).clone()


def test_a_block_matches_only_after_the_same_whole_prefix():
    a = list(range(3 * BLOCK))
    b = [999] + a[1:]
    assert block_names(a, 3)[0] != block_names(b, 3)[0]
    assert block_names(a, 3)[2] != block_names(b, 3)[2]  # same tokens in block 2, other prefix
    assert block_names(a, 2) == block_names(a + [1, 2, 3], 2)


def test_the_longest_prefix_in_whole_blocks_leaving_a_token_to_compute():
    cache = PrefixCache(max_bytes=10**8)
    first = list(range(3 * BLOCK + 10))
    cache.put(first, kv_for(first))
    assert len(cache) == 3
    follow_up = first + [7] * 50
    kv = cache.longest(follow_up)
    assert kv.shape[3] == 3 * BLOCK and torch.equal(kv, kv_for(first)[:, :, :, : 3 * BLOCK])
    # Exactly three blocks long: the last block is computed again for its logits.
    assert cache.longest(first[: 3 * BLOCK]).shape[3] == 2 * BLOCK
    assert cache.longest([5] + first[1:]) is None
    assert cache.hit_tokens == 5 * BLOCK and cache.queried_tokens == len(follow_up) + 3 * BLOCK + len(first)


def test_least_recently_used_prefixes_go_first_and_a_chain_loses_its_tail_before_its_head():
    block_bytes = kv_for(list(range(BLOCK))).numel() * 2
    cache = PrefixCache(max_bytes=4 * block_bytes)
    a, b = list(range(2 * BLOCK)), list(range(1000, 1000 + 3 * BLOCK))
    cache.put(a, kv_for(a))
    cache.put(b, kv_for(b))  # 5 blocks do not fit in 4: a's tail goes first
    assert cache.nbytes <= cache.max_bytes and len(cache) == 4
    assert cache.longest(a + [1]).shape[3] == BLOCK
    assert cache.longest(b + [1]).shape[3] == 3 * BLOCK

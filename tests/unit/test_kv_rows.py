"""The KV cache of rows: capacity growth keeps contents, moves copy a row, unwritten positions read as finite."""

import pytest
import torch

from llmserve.model_worker.kv_rows import KvRows

pytestmark = pytest.mark.unit


def test_growth_keeps_rows_and_capacity_is_a_multiple_of_the_granularity():
    cache = KvRows(layers=2, kv_heads=1, head_dim=4, rows=3, dtype=torch.float32, device=torch.device("cpu"), granularity=64)
    cache.ensure(2, 10)
    assert cache.capacity % 64 == 0 and cache.capacity >= 10
    cache.keys(1)[1, 0, :10] = torch.arange(40.0).view(10, 4)
    cache.ensure(2, 500)
    assert cache.capacity % 64 == 0 and cache.capacity >= 500
    assert torch.equal(cache.keys(1)[1, 0, :10], torch.arange(40.0).view(10, 4))


def test_move_copies_every_layer_and_make_finite_keeps_written_positions():
    cache = KvRows(layers=2, kv_heads=1, head_dim=2, rows=3, dtype=torch.float32, device=torch.device("cpu"))
    cache.ensure(3, 8)
    cache.data.fill_(float("nan"))  # what uninitialized memory may hold
    cache.data[:, :, 2, :, :3] = 1.0
    cache.values(0)[2, 0, :3] = 7.0
    cache.keys(1)[2, 0, :3] = 5.0
    cache.move(2, 0, 3)
    assert torch.equal(cache.values(0)[0, 0, :3], torch.full((3, 2), 7.0))
    assert torch.equal(cache.keys(1)[0, 0, :3], torch.full((3, 2), 5.0))
    cache.make_finite([3], width=8)
    assert torch.isfinite(cache.data[:, :, 0, :, :8]).all()
    assert torch.equal(cache.keys(1)[0, 0, :3], torch.full((3, 2), 5.0))

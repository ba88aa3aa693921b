import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from llmserve.model_worker import kv_batch

pytestmark = pytest.mark.unit

CONFIG = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=8, intermediate_size=16)


def cache_of(rows: int, length: int, fill: float) -> DynamicCache:
    cache = DynamicCache(config=CONFIG)
    for layer in range(2):
        k = torch.full((rows, 1, length, 4), fill)
        cache.update(k, k.clone(), layer)
    return cache


def test_decode_mask_covers_each_rows_tokens_and_the_new_one():
    mask = kv_batch.decode_mask([2, 4], cache_len=4, device=torch.device("cpu"))
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_prefill_inputs_are_left_padded_with_positions_from_zero():
    inputs = kv_batch.prefill_inputs([(5, 6), (7, 8, 9)], pad_id=0, device=torch.device("cpu"))
    assert inputs["input_ids"].tolist() == [[0, 5, 6], [7, 8, 9]]
    assert inputs["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert inputs["position_ids"].tolist() == [[0, 0, 1], [0, 1, 2]]


def test_merge_pads_the_shorter_side_on_the_left():
    batch, row = cache_of(1, 3, 1.0), cache_of(1, 5, 2.0)
    kv_batch.merge_rows(batch, row)
    assert kv_batch.cache_length(batch) == 5
    keys = batch.layers[0].keys[:, 0, :, 0]
    assert keys.tolist() == [[0, 0, 1, 1, 1], [2, 2, 2, 2, 2]]


def test_keep_rows_and_drop_leading():
    batch = cache_of(1, 2, 1.0)
    kv_batch.merge_rows(batch, cache_of(1, 4, 2.0))
    kv_batch.keep_rows(batch, [0])
    kv_batch.drop_leading(batch, 2)
    assert batch.layers[1].keys[:, 0, :, 0].tolist() == [[1, 1]]


def appendable_cache_of(rows: int, length: int, fill: float):
    cache = kv_batch.new_cache(CONFIG)
    for layer in range(2):
        k = torch.full((rows, 1, length, 4), fill)
        cache.update(k, k.clone(), layer)
    return cache


def test_appendable_cache_appends_in_place_and_matches_a_dynamic_cache():
    appendable, dynamic = appendable_cache_of(2, 3, 1.0), cache_of(2, 3, 1.0)
    assert all(isinstance(layer, kv_batch.AppendableLayer) for layer in appendable.layers)
    buffer = appendable.layers[0].keys.untyped_storage().data_ptr()
    for step in range(kv_batch.MIN_HEADROOM):
        k = torch.full((2, 1, 1, 4), float(step))
        for layer in range(2):
            got = appendable.update(k, k + 1, layer)
            want = dynamic.update(k, k + 1, layer)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # Every step so far fitted the headroom: no reallocation, no copy of what was cached.
    assert appendable.layers[0].keys.untyped_storage().data_ptr() == buffer
    # One more does not fit: the cache moves to a larger buffer, contents intact.
    k = torch.zeros((2, 1, 1, 4))
    keys, _ = appendable.update(k, k, 0)
    assert keys.shape[-2] == 3 + kv_batch.MIN_HEADROOM + 1
    assert torch.equal(keys[:, :, :-1], dynamic.layers[0].keys)
    assert appendable.layers[0].keys.untyped_storage().data_ptr() != buffer


def test_appendable_cache_merges_keeps_and_drops_like_a_dynamic_one():
    batch = appendable_cache_of(1, 2, 1.0)
    kv_batch.merge_rows(batch, appendable_cache_of(1, 4, 2.0))
    assert batch.layers[0].keys[:, 0, :, 0].tolist() == [[0, 0, 1, 1], [2, 2, 2, 2]]
    kv_batch.keep_rows(batch, [0])
    kv_batch.drop_leading(batch, 2)
    assert batch.layers[1].keys[:, 0, :, 0].tolist() == [[1, 1]]
    # Appending after the changes writes after the kept positions.
    k = torch.full((1, 1, 1, 4), 5.0)
    keys, _ = batch.update(k, k, 1)
    assert keys[:, 0, :, 0].tolist() == [[1, 1, 5]]

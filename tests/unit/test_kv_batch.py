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

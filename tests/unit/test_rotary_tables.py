"""The decoder's rotary tables are exactly transformers' own, for plain and scaled RoPE."""

import pytest
import torch

from llmserve.model_worker.llama_decoder import _rotary_tables

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "default", "rope_theta": 100000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    ],
)
def test_rotary_tables_equal_transformers(rope_parameters):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=1024, rope_parameters=rope_parameters)
    cos, sin = _rotary_tables(config, torch.device("cpu"), torch.float32)
    want_cos, want_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(1024).unsqueeze(0))
    assert torch.equal(cos, want_cos[0]) and torch.equal(sin, want_sin[0])

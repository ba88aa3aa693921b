"""The rotation of the weights at load (int8 numerics) leaves the model's function unchanged."""

import pytest
import torch

from llmserve.model_worker.llama_decoder import LlamaDecoder, Segment
from llmserve.model_worker.rotation import hadamard_block, hadamard_rows, random_rotation, sylvester_hadamard

pytestmark = pytest.mark.unit


def small_llama(tied: bool, biases: bool) -> tuple[object, dict[str, torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
        attention_bias=biases, mlp_bias=biases,
    )
    weights = {k: v.detach().clone() for k, v in LlamaForCausalLM(config).state_dict().items()}
    for name, tensor in weights.items():
        # Random norm weights and biases (a fresh model's are ones and zeros, which would hide a wrong fold).
        if name.endswith("norm.weight"):
            tensor.uniform_(0.2, 3.0)
        elif name.endswith(".bias"):
            tensor.normal_(0.0, 0.1)
    if tied:
        weights.pop("lm_head.weight", None)
    return config, weights


@pytest.mark.parametrize(("tied", "biases"), [(True, False), (False, True)])
def test_rotated_float_model_computes_the_same_logits(tied, biases):
    config, weights = small_llama(tied, biases)
    cpu = torch.device("cpu")
    plain = LlamaDecoder(config, weights, "float", cpu, torch.float32, onednn=False, rotate=False)
    rotated = LlamaDecoder(config, weights, "float", cpu, torch.float32, onednn=False, rotate=True)
    assert rotated.hadamard is not None and not torch.equal(rotated.embed, plain.embed)
    prompt = [5, 17, 250, 3, 99, 42, 7]
    results = []
    for decoder in (plain, rotated):
        cache = decoder.new_cache(rows=1)
        cache.ensure(1, 16)
        first = decoder.forward([Segment(0, 0, prompt)], cache)
        step = decoder.forward([Segment(0, len(prompt), [11])], cache)
        results.append(torch.cat([first, step]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


def test_rotation_is_orthogonal_and_repeatable():
    q = random_rotation(48)
    torch.testing.assert_close(q @ q.T, torch.eye(48, dtype=torch.float64))
    assert torch.equal(q, random_rotation(48))
    assert not torch.equal(q, random_rotation(48, seed=1))


def test_hadamard_rows_is_the_block_diagonal_product_and_batch_independent():
    assert [hadamard_block(n) for n in (1536, 96, 7, 8192)] == [128, 32, 1, 128]
    h = sylvester_hadamard(32)
    torch.testing.assert_close(h @ h, 32 * torch.eye(32, dtype=torch.float64))
    torch.manual_seed(0)
    x = torch.randn(70, 96)
    full = hadamard_rows(x, h.float())
    want = x.double() @ torch.block_diag(h, h, h)
    torch.testing.assert_close(full.double(), want, rtol=1e-5, atol=1e-5)
    for rows in range(1, 70):
        assert torch.equal(hadamard_rows(x[:rows], h.float()), full[:rows])
        assert torch.equal(hadamard_rows(x[rows : rows + 1], h.float()), full[rows : rows + 1])


def test_int8_embedding_rows_are_close_and_use_a_byte_per_value():
    from llmserve.model_worker.llama_decoder import Int8Rows

    torch.manual_seed(2)
    table = torch.randn(300, 64) * torch.linspace(0.01, 3.0, 300).unsqueeze(1)  # rows of very different sizes
    rows = Int8Rows(table)
    assert rows.rows.dtype == torch.int8
    ids = torch.tensor([0, 5, 299, 5])
    got = rows.lookup(ids)
    assert ((got - table[ids]).norm(dim=1) / table[ids].norm(dim=1)).max() < 0.01

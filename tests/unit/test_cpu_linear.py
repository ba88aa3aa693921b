import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from llmserve.model_worker.cpu_linear import OneDnnLinear, pack_linears, supported

pytestmark = pytest.mark.unit

CONFIG = LlamaConfig(
    vocab_size=300, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=64,
    tie_word_embeddings=True,
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 32), (16, 32), (3, 7, 32)])
def test_onednn_linear_computes_what_nn_linear_does(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(32, 48, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        got, want = OneDnnLinear(linear)(x), linear(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pack_linears_copies_the_model_and_shares_everything_else():
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG).eval()
    packed = pack_linears(model)
    assert packed is not model
    # The original keeps transformers' modules; the copy has none left.
    assert sum(type(m) is nn.Linear for m in model.modules()) == 2 * 7 + 1
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert packed.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert packed.model.norm.weight is model.model.norm.weight
    ids = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(packed(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(
            packed.generate(ids, max_new_tokens=5, do_sample=False), model.generate(ids, max_new_tokens=5, do_sample=False)
        )


def test_models_onednn_cannot_take_are_left_as_they_are():
    model = LlamaForCausalLM(CONFIG).to(torch.bfloat16)
    assert "float32" in supported(model)
    assert pack_linears(model) is model


def test_in_place_packing_changes_the_model_itself():
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG).eval()
    ids = torch.randint(0, 300, (1, 7))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    assert pack_linears(model, in_place=True) is model
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)

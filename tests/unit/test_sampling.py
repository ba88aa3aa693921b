import pytest
import torch

from llmserve.model_worker.sampling import (
    SamplingConfig,
    apply_openai_penalties,
    apply_repetition_penalty,
    sample_next,
    token_logprobs,
)

pytestmark = pytest.mark.unit

EMPTY = torch.empty(0, dtype=torch.long)


def logits() -> torch.Tensor:
    return torch.tensor([0.1, 2.0, 1.5, -1.0, 0.0])


def test_greedy_is_argmax():
    assert sample_next(logits(), SamplingConfig(), EMPTY, None) == 1


def test_top_k_one_equals_greedy_whatever_the_temperature():
    cfg = SamplingConfig(temperature=1.5, top_k=1)
    draws = {sample_next(logits(), cfg, EMPTY, torch.Generator().manual_seed(s)) for s in range(20)}
    assert draws == {1}


def test_tiny_top_p_keeps_only_the_most_likely_token():
    cfg = SamplingConfig(temperature=1.0, top_p=0.01)
    draws = {sample_next(logits(), cfg, EMPTY, torch.Generator().manual_seed(s)) for s in range(20)}
    assert draws == {1}


def test_same_seed_same_draws_and_different_seeds_differ():
    cfg = SamplingConfig(temperature=1.0)
    flat = torch.zeros(1000)

    def run(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [sample_next(flat, cfg, EMPTY, g) for _ in range(10)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_restricts_draws_to_the_k_best():
    cfg = SamplingConfig(temperature=1.0, top_k=2)
    draws = {sample_next(logits(), cfg, EMPTY, torch.Generator().manual_seed(s)) for s in range(200)}
    assert draws == {1, 2}


def test_repetition_penalty_lowers_seen_tokens():
    penalised = apply_repetition_penalty(logits(), torch.tensor([1, 3]), 2.0)
    assert penalised[1] == pytest.approx(1.0)  # positive: divided
    assert penalised[3] == pytest.approx(-2.0)  # negative: multiplied
    assert penalised[2] == pytest.approx(1.5)  # unseen: untouched
    assert sample_next(logits(), SamplingConfig(repetition_penalty=2.0), torch.tensor([1]), None) == 2


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(5)
    generated = torch.tensor([1, 1, 1, 3])
    out = apply_openai_penalties(logits, generated, presence=0.5, frequency=0.25)
    # Token 1: three times (0.75) and present (0.5); token 3: once (0.25) and present (0.5).
    assert out.tolist() == pytest.approx([0.0, -1.25, 0.0, -0.75, 0.0])
    assert apply_openai_penalties(logits, generated, 0.0, 0.0) is logits


def test_logit_bias_can_force_or_forbid_a_token():
    logits = torch.tensor([3.0, 2.0, 1.0])
    assert sample_next(logits, SamplingConfig(logit_bias=((2, 100.0),)), torch.empty(0, dtype=torch.long), None) == 2
    assert sample_next(logits, SamplingConfig(logit_bias=((0, -100.0),)), torch.empty(0, dtype=torch.long), None) == 1


def test_banned_tokens_are_never_drawn_greedy_or_sampled():
    logits = torch.tensor([5.0, 0.0, 0.0])
    assert sample_next(logits, SamplingConfig(), torch.empty(0, dtype=torch.long), None, banned=(0,)) != 0
    gen = torch.Generator().manual_seed(1)
    draws = {sample_next(logits, SamplingConfig(temperature=2.0, seed=1), torch.empty(0, dtype=torch.long), gen, banned=(0,)) for _ in range(50)}
    assert 0 not in draws


def test_token_logprobs_are_a_log_softmax_with_the_best_alternatives_first():
    logits = torch.tensor([1.0, 3.0, 2.0])
    chosen, top = token_logprobs(logits, 2, top=2)
    expected = torch.log_softmax(logits, dim=-1)
    assert chosen == pytest.approx(float(expected[2]))
    assert [i for i, _ in top] == [1, 2] and top[0][1] == pytest.approx(float(expected[1]))


def test_only_plain_greedy_rows_take_the_batched_argmax():
    assert SamplingConfig().plain_greedy
    for changed in ({"logprobs": True}, {"presence_penalty": 0.1}, {"logit_bias": ((1, 1.0),)}, {"temperature": 0.7}):
        assert not SamplingConfig(**changed).plain_greedy, changed

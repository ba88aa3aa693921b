import pytest
import torch

from llmserve.model_worker.sampling import SamplingConfig, apply_repetition_penalty, sample_next

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

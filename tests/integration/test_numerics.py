"""Quality of each numeric mode, measured on the committed text (bench/text): perplexity against float32."""

from pathlib import Path

import pytest

from llmserve.model_worker.perplexity import perplexity

pytestmark = pytest.mark.integration

TEXT = Path(__file__).resolve().parents[2] / "bench" / "text" / "public_domain_prose.txt"


@pytest.fixture(scope="module")
def text_ids(flat_smollm):
    ids = flat_smollm("float").tokenizer(TEXT.read_text())["input_ids"]
    assert len(ids) > 2000
    return ids


@pytest.fixture(scope="module")
def float_perplexity(flat_smollm, text_ids):
    return perplexity(flat_smollm("float").model, text_ids)


def test_float_perplexity_is_the_models_own(float_perplexity):
    # SmolLM2-135M-Instruct on this text in transformers' own float32 model: 15.48.
    assert 14.5 < float_perplexity < 16.5


def test_int8_perplexity_within_two_percent_of_float(flat_smollm, text_ids, float_perplexity):
    int8 = perplexity(flat_smollm("int8").model, text_ids)
    assert int8 <= float_perplexity * 1.02, f"int8 {int8:.3f} against float32 {float_perplexity:.3f}"

"""Int8 linear layers: accurate on rotated inputs, and a row's result independent of the rest of the batch."""

import pytest
import torch

from llmserve.model_worker import int8_linear
from llmserve.model_worker.int8_linear import Int8Linear
from llmserve.model_worker.rotation import random_rotation

pytestmark = [pytest.mark.unit, pytest.mark.skipif(int8_linear.available() is not None, reason="no int8 backend")]


@pytest.mark.parametrize(("in_features", "out_features"), [(576, 960), (1536, 576), (64, 49152)])
def test_row_results_do_not_depend_on_the_batch(in_features, out_features):
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(out_features, in_features) * 0.02)
    x = torch.randn(40, in_features)
    x[3] *= 80  # one loud row must not change any other row
    full = layer(x)
    for rows in (1, 2, 3, 5, 16, 33):
        assert torch.equal(layer(x[:rows]), full[:rows])
    assert torch.equal(layer(x[7:8]), full[7:8])


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_close_to_float_once_outlier_channels_are_rotated_away():
    torch.manual_seed(1)
    weight, bias = torch.randn(256, 512) * 0.05, torch.randn(256)
    x = torch.randn(8, 512)
    x[:, 5] *= 40  # an outlier channel, as language models have
    want = x @ weight.T + bias
    # Per-row 8 bits with the outlier left in place: the other channels get a few levels each.
    plain = relative_error(Int8Linear(weight, bias)(x), want)
    q = random_rotation(512).float()
    rotated = relative_error(Int8Linear(weight @ q, bias)(x @ q), want)
    assert rotated < 0.02
    assert rotated < plain / 3

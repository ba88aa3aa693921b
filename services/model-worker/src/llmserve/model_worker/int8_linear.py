"""Int8 linear layers on the CPU: 8-bit weights, 8-bit activations, and a row's result that never depends on
the other rows of the batch.

Weights are quantized once, per output channel and symmetrically, into fbgemm's packed int8 layout.
Activations are quantized at every call, per row: each row x is scaled by its own largest magnitude onto
the 8-bit grid (multiples of 1/128 in [-127/128, 127/128]). The result is s * W q. Per-row 8 bits are
only accurate when no channel dwarfs the others, which is what the rotation of the weights at load
brings about (rotation.py); without it, a few loud channels cost 18 % of perplexity.

Every row goes to the int8 product with the same fixed quantization, scale 1/128 and zero point 128
(fbgemm's `linear_with_input_q_dq_qweight_dq_output_fp32`: quantize with given parameters, multiply,
return float32), and products accumulate in int32. So a row's output is the same whatever else is in the
batch — the basis of "greedy output batched equals the same request alone" in int8 numerics. fbgemm's
dynamic quantization (`quantize_dynamic`) picks one scale for the whole input, which lets a row's result
change with the batch and lets one loud row coarsen every other.

fbgemm on AVX2 multiplies unsigned 8-bit activations by signed 8-bit weights in pairs summed in 16 bits,
which can saturate when two large activations meet two large weights of one sign (torch's own dynamic
quantization keeps activations to 7 bits there for that reason). The clipping depends on the row's
own values only, rotated values are rarely that large together, and its effect is inside the measured
perplexity; a second 7-bit pass to avoid it would double the cost of every product.
"""

from __future__ import annotations

import warnings

import torch

from llmserve.model_worker.rotation import hadamard_rows

# fbgemm is torch's x86 int8 backend; its packed weights are what `quantized::linear_dynamic` takes.
ENGINE = "fbgemm"
# The int8 product that takes its input's quantization parameters instead of choosing them.
_PRODUCT = "linear_with_input_q_dq_qweight_dq_output_fp32"


def available() -> str | None:
    """Why int8 linears cannot run here, or None when they can."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        return f"this torch build has no {ENGINE} int8 backend"
    if not hasattr(torch.ops.quantized, _PRODUCT):
        return f"this torch build has no quantized::{_PRODUCT}"
    return None


class Int8Linear:
    """y = x W^T + b with W in int8 (one scale per output channel); x of shape [rows, in_features], float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        weight = weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # Quantized tensors are deprecated as a user-facing type; fbgemm's packed weights still take one.
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        self._pack(qweight, bias)

    @classmethod
    def from_quantized(cls, values: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """The layer whose `quantized()` gave (values, scales): the same packed weights, bit for bit."""
        zero_points = torch.zeros(values.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(values, scales.double(), zero_points, 0)
        layer = cls.__new__(cls)
        layer._pack(qweight, bias)
        return layer

    def _pack(self, qweight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = qweight.shape
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().clone()

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weights [out, in] and their float64 scale per output channel."""
        qweight = torch.ops.quantized.linear_unpack(self.packed)[0]
        return qweight.int_repr(), qweight.q_per_channel_scales()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = _int8_linear(x, self.packed)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    def nbytes(self) -> int:
        return self.out_features * self.in_features + 8 * self.out_features


# TorchScript runs these small operations without the Python interpreter between them: half the time of
# a call at one or two rows, where the int8 product itself takes 25 us (SmolLM2's shapes).
# In the functions below, `inside` is the grid's edge (127/128) less a hair, so that rounding never
# reaches past it (TorchScript takes no global floats, so each repeats the literal).
@torch.jit.script
def _scaled_product(x: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 product of each row scaled onto the grid of multiples of 1/128 in [-127/128, 127/128]
    (quantized at scale 1/128 around zero point 128), with each row's largest magnitude: the result
    times largest / inside is x W^T."""
    inside = 0.9921875 * (1.0 - 2.0**-20)
    largest = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x * (inside / largest), 0.0078125, 128, packed), largest


@torch.jit.script
def _int8_linear(x: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> torch.Tensor:
    inside = 0.9921875 * (1.0 - 2.0**-20)
    y, largest = _scaled_product(x, packed)
    return y * (largest / inside)


@torch.jit.script
def _int8_linear_normed(x: torch.Tensor, eps: float, packed: torch.classes.quantized.LinearPackedParamsBase) -> torch.Tensor:
    """The product of RMS-normed x (a norm without weight, as rotated weights have): a row's norm is one
    factor, which its own int8 scaling takes out anyway, so it multiplies the result instead of x."""
    inside = 0.9921875 * (1.0 - 2.0**-20)
    y, largest = _scaled_product(x, packed)
    inverse_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y * (largest * inverse_rms / inside)


# A decoder layer's small operations around its int8 products, also in TorchScript (the layer's Python
# overhead was more than half of a decode step at one row). They take rotated weights, whose RMS norms
# have no weight (rotation.py).
@torch.jit.script
def attention_inputs(
    x: torch.Tensor, eps: float, packed: torch.classes.quantized.LinearPackedParamsBase,
    cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMS norm, the fused q/k/v product and rotary positions: q [T, heads, d], k and v [T, kv_heads, d]."""
    total = x.shape[0]
    qkv = _int8_linear_normed(x, eps, packed)
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(total, heads + kv_heads, head_dim)
    half = head_dim // 2
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk = qk * cos + rotated * sin
    v = qkv[:, (heads + kv_heads) * head_dim :].view(total, kv_heads, head_dim)
    return qk[:, :heads], qk[:, heads:], v


@torch.jit.script
def mlp_block(
    x: torch.Tensor, attn: torch.Tensor, o_packed: torch.classes.quantized.LinearPackedParamsBase,
    eps: float, gate_up_packed: torch.classes.quantized.LinearPackedParamsBase,
    down_packed: torch.classes.quantized.LinearPackedParamsBase, hadamard: torch.Tensor,
) -> torch.Tensor:
    """The attention output product and residual, then RMS norm, SiLU-gated MLP (its inner activations
    through the Hadamard transform, rotation.py) and residual."""
    x = x + _int8_linear(attn, o_packed)
    gate, up = _int8_linear_normed(x, eps, gate_up_packed).chunk(2, dim=-1)
    inner = hadamard_rows(torch.nn.functional.silu(gate) * up, hadamard)
    return x + _int8_linear(inner, down_packed)

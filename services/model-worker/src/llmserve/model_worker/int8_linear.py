"""Int8 linear layers on the CPU: 8-bit weights, activations to about 14 bits, and a row's result that never
depends on the other rows of the batch.

Weights are quantized once, per output channel and symmetrically, into fbgemm's packed int8 layout.
Activations are quantized at every call, per row, in two passes that go through the int8 kernel as one
matrix: each row x is scaled by its own largest magnitude onto fbgemm's 7-bit grid (multiples of 1/64
in [-63/64, 63/64]), and what that grid misses (within half a step) is stretched by 128 onto the same
grid in a second row. The result is s * (W q1 + W q2 / 128): the activation error is that of a
13-bit quantization, and the weights' 8 bits set the accuracy (perplexity on bench/text within 0.5 %
of float32; one 7-bit pass alone was 20 % worse, because a few large channels leave the other channels
of a row only a handful of levels).

A pin row (63/64, -1, 0, ...) is appended to every call, so fbgemm's dynamic quantization always sees the
range [-1, 63/64] and picks the same scale (exactly 1/64) and zero point: the grid the rows were
rounded for, the same for every call. Products accumulate in int32, exactly. So a row's output is the
same whatever else is in the batch — the basis of "greedy output batched equals the same request alone"
in int8 numerics. fbgemm's own dynamic quantization picks one scale for the whole input, which lets a row's
result change with the batch and lets one loud row coarsen every other.

fbgemm on AVX2 multiplies unsigned 8-bit activations by signed 8-bit weights in pairs that saturate at
16 bits, so activations use its 7-bit range (`reduce_range`), as torch's own dynamic quantization does there.
"""

from __future__ import annotations

import warnings

import torch

# fbgemm is torch's x86 int8 backend; its packed weights are what `quantized::linear_dynamic` takes.
ENGINE = "fbgemm"
# The 7-bit grid: multiples of 1/64 in [-63/64, 63/64] (the pin row's -1 only fixes the range).
_GRID = 64.0
_EDGE = 63.0 / 64.0


def available() -> str | None:
    """Why int8 linears cannot run here, or None when they can."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        return f"this torch build has no {ENGINE} int8 backend"
    return None


class Int8Linear:
    """y = x W^T + b with W in int8 (one scale per output channel); x of shape [rows, in_features], float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # Quantized tensors are deprecated as a user-facing type; fbgemm's packed weights still take one.
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if bias is None else bias.detach().float().clone()
        pin = torch.zeros(self.in_features)
        pin[0], pin[1] = _EDGE, -1.0
        self.pin = pin

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = _two_pass_linear(x, self.pin, self.packed)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    def nbytes(self) -> int:
        return self.out_features * self.in_features + 8 * self.out_features


# TorchScript runs these dozen small operations without the Python interpreter between them: half the
# time of a call at one or two rows, where the int8 product itself takes 25 us (SmolLM2's shapes).
@torch.jit.script
def _two_pass_linear(x: torch.Tensor, pin: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase) -> torch.Tensor:
    # TorchScript takes no global floats: the grid (1/64 steps, edge 63/64) again, and a hair inside the
    # edge, so that no row can widen the range the pin row fixes.
    grid, edge = 64.0, 0.984375
    inside = edge * (1.0 - 2.0**-20)
    rows = x.shape[0]
    largest = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    coarse = x * (inside / largest)
    # In grid steps, what rounding to the grid misses: within [-1/2, 1/2], stretched to the edge.
    fine = coarse * grid
    fine = (fine - torch.round(fine)) * (2.0 * edge)
    y = torch.ops.quantized.linear_dynamic(torch.cat([coarse, fine, pin.unsqueeze(0)]), packed, True)
    out = torch.add(y[:rows], y[rows : 2 * rows], alpha=1.0 / (2.0 * edge * grid))
    return out * (largest / inside)


# A decoder layer's small operations around its int8 products, also in TorchScript (the layer's Python
# overhead was more than half of a decode step at one row). Numerically the same operations as
# llama_decoder's Python path.
@torch.jit.script
def attention_inputs(
    x: torch.Tensor, norm: torch.Tensor, eps: float, pin: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase,
    cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMS norm, the fused q/k/v product and rotary positions: q [T, heads, d], k and v [T, kv_heads, d]."""
    total = x.shape[0]
    qkv = _two_pass_linear(torch.rms_norm(x, [x.shape[-1]], norm, eps), pin, packed)
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(total, heads + kv_heads, head_dim)
    half = head_dim // 2
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk = qk * cos + rotated * sin
    v = qkv[:, (heads + kv_heads) * head_dim :].view(total, kv_heads, head_dim)
    return qk[:, :heads], qk[:, heads:], v


@torch.jit.script
def mlp_block(
    x: torch.Tensor, attn: torch.Tensor, o_pin: torch.Tensor, o_packed: torch.classes.quantized.LinearPackedParamsBase,
    norm: torch.Tensor, eps: float, gate_up_pin: torch.Tensor, gate_up_packed: torch.classes.quantized.LinearPackedParamsBase,
    down_pin: torch.Tensor, down_packed: torch.classes.quantized.LinearPackedParamsBase,
) -> torch.Tensor:
    """The attention output product and residual, then RMS norm, SiLU-gated MLP and residual."""
    x = x + _two_pass_linear(attn, o_pin, o_packed)
    gate, up = _two_pass_linear(torch.rms_norm(x, [x.shape[-1]], norm, eps), gate_up_pin, gate_up_packed).chunk(2, dim=-1)
    return x + _two_pass_linear(torch.nn.functional.silu(gate) * up, down_pin, down_packed)

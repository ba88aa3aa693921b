"""A Llama-family checkpoint rotated so that 8-bit activations lose little, computing the same function.

A language model's hidden state has a few channels far louder than the rest. Quantized per row, the
loudest channel sets the step, and the others are left a handful of levels: that, not the 8-bit weights,
is what costs an int8 model its quality. An orthogonal rotation Q of the hidden space changes nothing
in exact arithmetic and spreads every channel's energy over all of them, so a row's largest value is
close to its typical one. Folded into the weights once at load, it costs nothing per token:

  - RMS norm weights are multiplied into the layers that read the normed state (q/k/v, gate/up and the
    output layer); the norms are left without a weight, and a norm without a weight commutes with Q
    (a rotation keeps a row's length);
  - layers that read the residual stream take W Q for W (their input is now x Q); layers that write into
    it (o and down) take Q^T W and their biases b Q; the embedding table's rows become E Q;
  - the MLP's inner activations (down's input) pass an elementwise SiLU, which no fixed rotation crosses:
    they go through a Hadamard transform at run time, in blocks (`hadamard_rows`), and down takes
    W H / block.

Q is a random orthogonal matrix from a fixed seed (QR of a Gaussian matrix, in float64, like every
product here). Measured on bench/text with SmolLM2-135M: one 8-bit pass per layer went from 18 % above
float32's perplexity without rotation to within 2 % with it.
"""

from __future__ import annotations

import re
from typing import Any

import torch

SEED = 20261204
# Largest Hadamard block for the MLP's inner activations: 128 measured better than 64, and each doubling
# adds a pass of sums and differences.
MAX_HADAMARD_BLOCK = 128
# Embedding rows rotated at a time (bounds the float64 working memory at load).
_CHUNK_ROWS = 4096

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_READS_NORMED = {
    "self_attn.q_proj.weight": "input_layernorm",
    "self_attn.k_proj.weight": "input_layernorm",
    "self_attn.v_proj.weight": "input_layernorm",
    "mlp.gate_proj.weight": "post_attention_layernorm",
    "mlp.up_proj.weight": "post_attention_layernorm",
}


def hadamard_block(intermediate_size: int) -> int:
    """The largest power of two up to MAX_HADAMARD_BLOCK that divides the MLP's width."""
    block = 1
    while block < MAX_HADAMARD_BLOCK and intermediate_size % (2 * block) == 0:
        block *= 2
    return block


def random_rotation(size: int, seed: int = SEED) -> torch.Tensor:
    """A random orthogonal [size, size] matrix in float64, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    # Signs fixed by R's diagonal make the draw uniform over rotations (and unique for the seed).
    return q * torch.sign(torch.diagonal(r))


def sylvester_hadamard(block: int) -> torch.Tensor:
    """The unnormalized [block, block] Hadamard matrix (entries +1 and -1, symmetric: H H = block I)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


@torch.jit.script
def hadamard_rows(x: torch.Tensor, hadamard: torch.Tensor) -> torch.Tensor:
    """x [rows, width] times the block-diagonal matrix of `hadamard` [block, block] (block divides width).

    One matrix product over [rows * width / block, block]: each output row is a dot product of one input
    row's block with the matrix's columns, in the same order whatever the number of rows (tested), so a
    row's result does not depend on the batch. (The fast transform's sums and differences were exact
    too, but three times slower at a step's size, in seven passes over the activations.)"""
    block = hadamard.shape[0]
    return (x.reshape(-1, block) @ hadamard).view(x.shape)


class RotatedCheckpoint:
    """A name → tensor mapping (like a safetensors handle) with every tensor rotated as the module says.

    Tensors are rotated one at a time when asked for, so loading never holds more than one of them."""

    def __init__(self, weights: Any, config: Any) -> None:
        self._get = weights.get_tensor if hasattr(weights, "get_tensor") else weights.__getitem__
        self._names = set(weights.keys())
        self.rotation = random_rotation(config.hidden_size)
        self.block = hadamard_block(config.intermediate_size)
        # Applied to down's inner activations at run time (hadamard_rows); down's weights take H / block.
        self.hadamard = sylvester_hadamard(self.block)
        # A tied output layer becomes a matrix of its own (the table's rows are E Q, the layer's E diag(g) Q).
        self._head_source = "lm_head.weight" if "lm_head.weight" in self._names else "model.embed_tokens.weight"
        self._names.add("lm_head.weight")

    def keys(self):
        return self._names

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._rotated(name).float()

    def _source(self, name: str) -> torch.Tensor:
        return self._get(name).double()

    def _rotated(self, name: str) -> torch.Tensor:
        q = self.rotation
        if name == "model.embed_tokens.weight":
            table = self._get(name)
            return torch.cat([chunk.double() @ q for chunk in table.split(_CHUNK_ROWS)])
        if name == "lm_head.weight":
            gamma = self._source("model.norm.weight")
            return torch.cat([(chunk.double() * gamma) @ q for chunk in self._get(self._head_source).split(_CHUNK_ROWS)])
        if name == "model.norm.weight":
            return torch.ones_like(self._source(name))
        layer = _LAYER.fullmatch(name)
        if layer is None:
            return self._source(name)
        prefix, part = f"model.layers.{layer.group(1)}", layer.group(2)
        if part in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            return torch.ones_like(self._source(name))
        if part in _READS_NORMED:
            return (self._source(name) * self._source(f"{prefix}.{_READS_NORMED[part]}.weight")) @ q
        if part in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            written = q.T @ self._source(name)
            if part == "mlp.down_proj.weight":
                blocks = written.view(written.shape[0], -1, self.block)
                written = (blocks @ (self.hadamard / self.block)).view(written.shape)
            return written
        if part in ("self_attn.o_proj.bias", "mlp.down_proj.bias"):
            return self._source(name) @ q
        return self._source(name)

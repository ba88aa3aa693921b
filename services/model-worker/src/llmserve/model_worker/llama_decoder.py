"""A Llama-family decoder that runs a whole engine iteration — decode rows and prompt chunks — in one pass.

The model's tokens are laid out flat: every linear layer multiplies one [tokens, hidden] matrix, whatever
mix of sequences the tokens belong to, and only attention looks at which sequence a token is in. A
decode step for 16 rows and a new 45-token prompt is one pass over the weights, not two.

Contract of `forward(segments, cache)`:
  - each `Segment` is a run of consecutive tokens of one sequence, starting at position `start`, whose
    keys and values go into row `row` of the `KvRows` cache (positions `start` .. `start + len - 1`);
    the positions before `start` must already be in that row;
  - the leading segments with one token each and `row` equal to their index form the decode batch
    (attention for them is one batched call); every other segment is attended to on its own;
  - returns the logits of the last token of every segment whose `logits` is set, in segment order.

Weights come straight from the checkpoint's safetensors, one tensor at a time, into the numeric mode's
layout (`Numerics`): "float" keeps the checkpoint's floating point type (on the CPU in float32 through
oneDNN, token-identical to transformers' own model on every prompt tested); "int8" rotates the weights
(rotation.py), quantizes every linear layer and the output layer (int8_linear.py) and keeps the embedding
table in int8 rows. Nothing of
the plain float32 model is kept, which is what brings a worker's memory down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmserve.model_worker import int8_linear, rotation
from llmserve.model_worker.kv_rows import KvRows

SUPPORTED_MODEL_TYPES = ("llama",)
# Decode attention runs over each row's length rounded up to a multiple of this (see _decode_runs).
ATTENTION_BUCKET = 64
NUMERICS = ("float", "int8")


@dataclass
class Segment:
    # Row of the KV cache this sequence's positions live in.
    row: int
    # Position of the first token (tokens before it are in the cache already).
    start: int
    # Token ids to run.
    tokens: list[int]
    # Whether the caller needs the logits after the last token (not for a prompt chunk that is not the last).
    logits: bool = True
    # A piece of a prompt: attended to on its own, never as part of the decode batch (even when it is
    # one token in the row of its index), so its numbers do not depend on how the prompt was split.
    prompt: bool = False


def unsupported(config: Any) -> str | None:
    """Why this decoder cannot run a model of `config`, or None when it can."""
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope == "dynamic":
        return "dynamic RoPE scaling changes with the sequence length; the decoder keeps one table"
    return None


class Int8Rows:
    """A lookup table in int8 with one scale per row. Rows are read, never multiplied: a row's own scale
    keeps each of them to 8 bits of its own range (perplexity measured with the rest of int8 numerics),
    half the memory of float16."""

    def __init__(self, table: torch.Tensor) -> None:
        self.scale = (table.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(1e-12).float()
        self.rows = torch.round(table / self.scale).to(torch.int8)

    @classmethod
    def from_parts(cls, rows: torch.Tensor, scale: torch.Tensor) -> Int8Rows:
        table = cls.__new__(cls)
        table.rows, table.scale = rows, scale
        return table

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows[ids].float() * self.scale[ids]


class _FloatLinear:
    """y = x W^T + b in the weight's own type; on the CPU in float32 with W reordered once for oneDNN."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool) -> None:
        self.bias = bias
        self._onednn = onednn and weight.device.type == "cpu" and weight.dtype == torch.float32
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 16) if self._onednn else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)


# A layer's linear parts, in the order of a pass.
_LINEARS = ("qkv", "o", "gate_up", "down")


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Any
    o: Any
    post_norm: torch.Tensor
    gate_up: Any
    down: Any

    def scriptable(self, rotated: bool) -> bool:
        """Rotated int8 layers without biases run their small operations in TorchScript (int8_linear.py)."""
        lins = [getattr(self, part) for part in _LINEARS]
        return rotated and all(isinstance(lin, int8_linear.Int8Linear) and lin.bias is None for lin in lins)


class LlamaDecoder:
    def __init__(
        self, config: Any, weights: dict[str, torch.Tensor] | Any, numerics: str, device: torch.device, dtype: torch.dtype,
        onednn: bool = True, rotate: bool | None = None,
    ) -> None:
        """`weights` maps checkpoint names to tensors (or is a safetensors handle with `get_tensor`).
        `rotate` (default: in int8 numerics) rotates the weights as rotation.py says."""
        self._describe(config, numerics, device, dtype)
        # int8: the hidden space rotated, and the MLP's inner activations through this Hadamard matrix
        # (rotation.py); None when the weights are not rotated.
        self.hadamard: torch.Tensor | None = None
        if numerics == "int8" if rotate is None else rotate:
            weights = rotation.RotatedCheckpoint(weights, config)
            self.hadamard = weights.hadamard.to(device=device, dtype=dtype)
        get = weights.get_tensor if hasattr(weights, "get_tensor") else weights.__getitem__
        names = set(weights.keys())

        def tensor(name: str) -> torch.Tensor:
            # A copy: a view would keep the memory-mapped checkpoint (all of it that was read) resident.
            return get(name).to(device=device, dtype=dtype, copy=True)

        def optional(name: str) -> torch.Tensor | None:
            return tensor(name) if name in names else None

        def linear(names_: list[str]) -> Any:
            weight = torch.cat([tensor(f"{n}.weight") for n in names_]) if len(names_) > 1 else tensor(f"{names_[0]}.weight")
            biases = [optional(f"{n}.bias") for n in names_]
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else torch.zeros(tensor(f"{n}.weight").shape[0], dtype=dtype, device=device) for n, b in zip(names_, biases, strict=True)]
            )
            if numerics == "int8":
                return int8_linear.Int8Linear(weight, bias)
            return _FloatLinear(weight, bias, onednn)

        self.layers: list[_Layer] = []
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}"
            attn, mlp = f"{p}.self_attn", f"{p}.mlp"
            self.layers.append(
                _Layer(
                    input_norm=tensor(f"{p}.input_layernorm.weight"),
                    qkv=linear([f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"]),
                    o=linear([f"{attn}.o_proj"]),
                    post_norm=tensor(f"{p}.post_attention_layernorm.weight"),
                    gate_up=linear([f"{mlp}.gate_proj", f"{mlp}.up_proj"]),
                    down=linear([f"{mlp}.down_proj"]),
                )
            )
        self.final_norm = tensor("model.norm.weight")
        embed = tensor("model.embed_tokens.weight")
        self.lm_head = linear(["lm_head"] if "lm_head.weight" in names else ["model.embed_tokens"])
        # The lookup table: int8 rows in int8 mode (a quarter of float32's memory).
        self.embed: torch.Tensor | Int8Rows = Int8Rows(embed) if numerics == "int8" else embed
        self._finish()

    def _describe(self, config: Any, numerics: str, device: torch.device, dtype: torch.dtype) -> None:
        """The model's shapes and numeric mode: everything but the weights."""
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        if numerics == "int8" and (device.type != "cpu" or dtype != torch.float32):
            raise ValueError("int8 numerics run on the CPU with float32 activations")
        self.config = config
        self.numerics = numerics
        self.device, self.dtype = device, dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        # int8 numerics keep keys and values in float16 (half the memory of a position; attention
        # still computes in float32); float numerics keep them in the model's type, exactly.
        self.kv_dtype = torch.float16 if numerics == "int8" else dtype
        self.vocab_size = config.vocab_size

    def _finish(self) -> None:
        """What follows from the weights: whether layers run in TorchScript, and the rotary tables."""
        self.scripted = all(layer.scriptable(self.hadamard is not None) for layer in self.layers)
        self.cos, self.sin = _rotary_tables(self.config, self.device, self.dtype)
        self.max_positions = self.cos.shape[0]

    def int8_state(self) -> dict[str, torch.Tensor]:
        """Every weight of a rotated int8 decoder as plain tensors (int8 values, scales, norms, biases):
        what `from_int8_state` builds the same decoder from without rotating or quantizing again."""
        if self.numerics != "int8" or self.hadamard is None:
            raise ValueError("only a rotated int8 decoder has an int8 state")
        state: dict[str, torch.Tensor] = {"final_norm": self.final_norm, "embed.rows": self.embed.rows, "embed.scale": self.embed.scale}
        linears = {f"layers.{i}.{part}": getattr(layer, part) for i, layer in enumerate(self.layers) for part in _LINEARS}
        linears["lm_head"] = self.lm_head
        for key, lin in linears.items():
            state[f"{key}.values"], state[f"{key}.scales"] = lin.quantized()
            if lin.bias is not None:
                state[f"{key}.bias"] = lin.bias
        for i, layer in enumerate(self.layers):
            state[f"layers.{i}.input_norm"], state[f"layers.{i}.post_norm"] = layer.input_norm, layer.post_norm
        return {name: t.contiguous() for name, t in state.items()}

    @classmethod
    def from_int8_state(cls, config: Any, state: Any) -> LlamaDecoder:
        """The rotated int8 decoder `int8_state` described; `state` maps names to tensors (or is a
        safetensors handle with `get_tensor`)."""
        get = state.get_tensor if hasattr(state, "get_tensor") else state.__getitem__
        names = set(state.keys())
        decoder = cls.__new__(cls)
        decoder._describe(config, "int8", torch.device("cpu"), torch.float32)
        decoder.hadamard = rotation.sylvester_hadamard(rotation.hadamard_block(config.intermediate_size)).float()

        def tensor(name: str) -> torch.Tensor:
            return get(name).clone()

        def linear(key: str) -> int8_linear.Int8Linear:
            bias = tensor(f"{key}.bias") if f"{key}.bias" in names else None
            # Copies: the packed layer keeps its int8 tensor, which must not hold the file's mapping.
            return int8_linear.Int8Linear.from_quantized(tensor(f"{key}.values"), tensor(f"{key}.scales"), bias)

        decoder.layers = [
            _Layer(
                input_norm=tensor(f"layers.{i}.input_norm"), post_norm=tensor(f"layers.{i}.post_norm"),
                **{part: linear(f"layers.{i}.{part}") for part in _LINEARS},
            )
            for i in range(config.num_hidden_layers)
        ]
        decoder.final_norm = tensor("final_norm")
        decoder.embed = Int8Rows.from_parts(tensor("embed.rows"), tensor("embed.scale"))
        decoder.lm_head = linear("lm_head")
        decoder._finish()
        return decoder

    @classmethod
    def from_checkpoint(cls, path: Path, config: Any, numerics: str, device: torch.device, dtype: torch.dtype, onednn: bool = True) -> LlamaDecoder:
        from safetensors import safe_open

        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors file in {path}")
        handles = [safe_open(str(f), "pt") for f in files]
        return cls(config, _Checkpoint(handles), numerics, device, dtype, onednn)

    def new_cache(self, rows: int) -> KvRows:
        return KvRows(len(self.layers), self.kv_heads, self.head_dim, rows, self.kv_dtype, self.device, granularity=ATTENTION_BUCKET)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def forward(self, segments: list[Segment], cache: KvRows, every_token: bool = False) -> torch.Tensor:
        """Logits after the last token of each segment that asks for them; after every token of every
        segment with every_token (for scoring text)."""
        dev = self.device
        tokens = [t for s in segments for t in s.tokens]
        positions = [s.start + j for s in segments for j in range(len(s.tokens))]
        n_decode = 0
        for i, s in enumerate(segments):
            if len(s.tokens) != 1 or s.row != i or s.prompt:
                break
            n_decode += 1
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        total = len(tokens)
        x = self.embed.lookup(ids) if isinstance(self.embed, Int8Rows) else F.embedding(ids, self.embed)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        nh, kvh, hd = self.heads, self.kv_heads, self.head_dim
        group = nh // kvh

        runs = []
        if n_decode:
            lengths = [s.start + 1 for s in segments[:n_decode]]
            runs = self._decode_runs(lengths)
            cache.make_finite(lengths, max(width for _, _, width, _ in runs))
            decode_rows = torch.arange(n_decode, device=dev)
            decode_pos = pos[:n_decode]
        # Offsets of the other segments in the flat token list, with their causal masks.
        others = []
        offset = n_decode
        for s in segments[n_decode:]:
            n = len(s.tokens)
            mask = None
            if s.start > 0:
                mask = torch.arange(s.start + n, device=dev).view(1, -1) <= (s.start + torch.arange(n, device=dev)).view(-1, 1)
            others.append((s, offset, n, mask))
            offset += n

        for index, layer in enumerate(self.layers):
            if self.scripted:
                q, k, v = int8_linear.attention_inputs(x, self.eps, layer.qkv.packed, cos, sin, nh, kvh, hd)
            else:
                h = F.rms_norm(x, (x.shape[-1],), layer.input_norm, self.eps)
                qkv = layer.qkv(h)
                qk = self._rope(qkv[:, : (nh + kvh) * hd].view(total, nh + kvh, hd), cos, sin)
                q, k = qk[:, :nh], qk[:, nh:]
                v = qkv[:, (nh + kvh) * hd :].view(total, kvh, hd)
            keys, values = cache.keys(index), cache.values(index)
            attn = torch.empty((total, nh, hd), dtype=self.dtype, device=dev)
            if n_decode:
                keys[decode_rows, :, decode_pos] = k[:n_decode].to(keys.dtype)
                values[decode_rows, :, decode_pos] = v[:n_decode].to(values.dtype)
                # Query heads that share a KV head are one group: [rows, kv_heads, group, head_dim].
                queries = q[:n_decode].view(n_decode, kvh, group, hd)
                for a, b, width, mask in runs:
                    run_keys = keys[a:b, :, :width].to(self.dtype)
                    scores = torch.matmul(queries[a:b], run_keys.transpose(-1, -2))
                    probs = torch.softmax(scores.mul_(self.scale).add_(mask), dim=-1)
                    attn[a:b] = torch.matmul(probs, values[a:b, :, :width].to(self.dtype)).reshape(b - a, nh, hd)
            for s, start, n, mask in others:
                keys[s.row, :, s.start : s.start + n] = k[start : start + n].transpose(0, 1)
                values[s.row, :, s.start : s.start + n] = v[start : start + n].transpose(0, 1)
                out = F.scaled_dot_product_attention(
                    q[start : start + n].transpose(0, 1).unsqueeze(0),
                    keys[s.row : s.row + 1, :, : s.start + n].to(self.dtype),
                    values[s.row : s.row + 1, :, : s.start + n].to(self.dtype),
                    attn_mask=mask,
                    is_causal=mask is None,
                    enable_gqa=group > 1,
                )
                attn[start : start + n] = out[0].transpose(0, 1)
            if self.scripted:
                x = int8_linear.mlp_block(
                    x, attn.view(total, nh * hd), layer.o.packed, self.eps,
                    layer.gate_up.packed, layer.down.packed, self.hadamard,
                )
                continue
            x = x + layer.o(attn.view(total, nh * hd))
            h = F.rms_norm(x, (x.shape[-1],), layer.post_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            inner = F.silu(gate) * up
            if self.hadamard is not None:
                inner = rotation.hadamard_rows(inner, self.hadamard)
            x = x + layer.down(inner)

        last, offset = [], 0
        for s in segments:
            offset += len(s.tokens)
            if every_token:
                last.extend(range(offset - len(s.tokens), offset))
            elif s.logits:
                last.append(offset - 1)
        if not last:
            return torch.empty((0, self.vocab_size), dtype=self.dtype, device=dev)
        h = x[last] if len(last) < total else x
        h = F.rms_norm(h, (h.shape[-1],), self.final_norm, self.eps)
        return self.lm_head(h)

    def _decode_runs(self, lengths: list[int]) -> list[tuple[int, int, int, torch.Tensor]]:
        """Decode rows grouped for attention: (first row, end row, width, additive mask) for each run of
        consecutive rows whose lengths round up to the same multiple of ATTENTION_BUCKET.

        A row's attention is computed over exactly that width whatever else is in the batch, so its
        numbers are the same alone or batched (a matrix product's last bits depend on its shape, and the
        int8 activations would turn a last-bit difference into a different quantization step)."""
        runs = []
        a = 0
        widths = [-(-n // ATTENTION_BUCKET) * ATTENTION_BUCKET for n in lengths]
        for b in range(1, len(lengths) + 1):
            if b == len(lengths) or widths[b] != widths[a]:
                width = widths[a]
                limits = torch.tensor(lengths[a:b], device=self.device).view(-1, 1, 1, 1)
                mask = torch.zeros((b - a, 1, 1, width), dtype=self.dtype, device=self.device)
                mask.masked_fill_(torch.arange(width, device=self.device).view(1, 1, 1, width) >= limits, float("-inf"))
                runs.append((a, b, width, mask))
                a = b
        return runs

    def weight_bytes(self) -> int:
        embed = self.embed.rows if isinstance(self.embed, Int8Rows) else self.embed
        total = embed.numel() * embed.element_size()
        for layer in self.layers:
            for lin in (layer.qkv, layer.o, layer.gate_up, layer.down):
                total += _linear_bytes(lin)
        return total + _linear_bytes(self.lm_head)


def _linear_bytes(lin: Any) -> int:
    if isinstance(lin, int8_linear.Int8Linear):
        return lin.nbytes()
    return lin.weight.numel() * lin.weight.element_size()


class _Checkpoint:
    """Several safetensors files read as one name → tensor mapping, a tensor at a time."""

    def __init__(self, handles: list[Any]) -> None:
        self._where = {name: h for h in handles for name in h.keys()}

    def keys(self):
        return self._where.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


def _rotary_tables(config: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position the model supports, computed as transformers' LlamaRotaryEmbedding
    computes them (its inverse frequencies, from transformers' own RoPE functions for scaled variants),
    without importing transformers' Llama modules (90 MB of a worker's memory)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    positions = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    freqs = torch.arange(positions, device=device)[:, None].float() * inv_freq.to(device=device, dtype=torch.float)
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)

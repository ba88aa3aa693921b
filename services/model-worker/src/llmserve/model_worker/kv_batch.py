"""A batch of KV caches of different lengths, kept left-padded in one transformers DynamicCache.

Row i's real tokens fill the last `lengths[i]` positions of every layer; the positions before them are
padding that the attention mask hides. This is the only module that touches the cache's tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _layers(cache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def cache_length(cache) -> int:
    layers = _layers(cache)
    return 0 if not layers else int(layers[0].keys.shape[-2])


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    # [B, H, L, D] -> [B, H, n + L, D]
    return t if n == 0 else F.pad(t, (0, 0, n, 0))


def merge_rows(batch, row) -> None:
    """Appends the rows of cache `row` to `batch`, left-padding whichever is shorter."""
    batch_len, row_len = cache_length(batch), cache_length(row)
    target = max(batch_len, row_len)
    for b_layer, r_layer in zip(_layers(batch), _layers(row), strict=True):
        b_layer.keys = torch.cat([_left_pad(b_layer.keys, target - batch_len), _left_pad(r_layer.keys, target - row_len)])
        b_layer.values = torch.cat([_left_pad(b_layer.values, target - batch_len), _left_pad(r_layer.values, target - row_len)])


def keep_rows(cache, rows: list[int]) -> None:
    index = None
    for layer in _layers(cache):
        if index is None:
            index = torch.tensor(rows, dtype=torch.long, device=layer.keys.device)
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def drop_leading(cache, n: int) -> None:
    """Removes n leading positions (padding of every row once the longest rows have left)."""
    if n <= 0:
        return
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, n:, :]
        layer.values = layer.values[:, :, n:, :]


def decode_mask(lengths: list[int], cache_len: int, device: torch.device) -> torch.Tensor:
    """Attention mask for one decode step: [B, cache_len + 1], ones over each row's real tokens and the new one."""
    positions = torch.arange(cache_len + 1, device=device)
    starts = torch.tensor([cache_len - n for n in lengths], device=device).unsqueeze(1)
    return (positions.unsqueeze(0) >= starts).long()


def prefill_inputs(prompts: list[tuple[int, ...]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded input ids, attention mask and positions for prefilling several prompts in one forward pass."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}

"""A batch of KV caches of different lengths, kept left-padded in one transformers cache.

Row i's real tokens fill the last `lengths[i]` positions of every layer; the positions before them are
padding that the attention mask hides. This is the only module that touches the cache's tensors.

`new_cache` builds a transformers `DynamicCache` whose full-attention layers are `AppendableLayer`s:
keys and values live in a buffer with room after the last position, so a decode step writes its one
new position in place. transformers' `DynamicLayer` concatenates instead, copying (and allocating) the
whole cache of every layer at every step, which costs more the longer the contexts get.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Room kept after the last position when a buffer is (re)allocated: at least this many positions, or a
# quarter of the live length, so reallocations (one copy of the live region each) stay rare.
MIN_HEADROOM = 32


class AppendableLayer(DynamicLayer):
    """A DynamicLayer whose `keys` / `values` are views of a larger buffer: [:, :, start:end, :]."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._start = 0
        self._end = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._kbuf is None:
            self.replace(key_states, value_states)
            return self.keys, self.values
        if self._end + n > self._kbuf.shape[-2]:
            self.replace(self.keys, self.values, extra=n)
        self._kbuf[:, :, self._end : self._end + n].copy_(key_states)
        self._vbuf[:, :, self._end : self._end + n].copy_(value_states)
        self._end += n
        self._view()
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor, extra: int = 0) -> None:
        """Sets the contents to `keys` / `values` (rows or padding changed), in a new buffer with room to append."""
        batch, heads, length, dim = keys.shape
        capacity = length + extra + max(MIN_HEADROOM, length // 4)
        kbuf = keys.new_empty((batch, heads, capacity, dim))
        vbuf = values.new_empty((batch, values.shape[1], capacity, values.shape[-1]))
        kbuf[:, :, :length].copy_(keys)
        vbuf[:, :, :length].copy_(values)
        self._kbuf, self._vbuf, self._start, self._end = kbuf, vbuf, 0, length
        self._view()

    def drop_leading(self, n: int) -> None:
        self._start += n
        self._view()

    def _view(self) -> None:
        self.keys = self._kbuf[:, :, self._start : self._end]
        self.values = self._vbuf[:, :, self._start : self._end]


def new_cache(config: Any) -> DynamicCache:
    """A cache for `config`'s model with appendable full-attention layers (sliding-window layers stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [AppendableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _layers(cache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def cache_length(cache) -> int:
    layers = _layers(cache)
    return 0 if not layers else int(layers[0].keys.shape[-2])


def _set(layer, keys: torch.Tensor, values: torch.Tensor) -> None:
    if isinstance(layer, AppendableLayer):
        layer.replace(keys, values)
    else:
        layer.keys, layer.values = keys, values


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    # [B, H, L, D] -> [B, H, n + L, D]
    return t if n == 0 else F.pad(t, (0, 0, n, 0))


def merge_rows(batch, row) -> None:
    """Appends the rows of cache `row` to `batch`, left-padding whichever is shorter."""
    batch_len, row_len = cache_length(batch), cache_length(row)
    target = max(batch_len, row_len)
    for b_layer, r_layer in zip(_layers(batch), _layers(row), strict=True):
        _set(
            b_layer,
            torch.cat([_left_pad(b_layer.keys, target - batch_len), _left_pad(r_layer.keys, target - row_len)]),
            torch.cat([_left_pad(b_layer.values, target - batch_len), _left_pad(r_layer.values, target - row_len)]),
        )


def keep_rows(cache, rows: list[int]) -> None:
    index = None
    for layer in _layers(cache):
        if index is None:
            index = torch.tensor(rows, dtype=torch.long, device=layer.keys.device)
        _set(layer, layer.keys.index_select(0, index), layer.values.index_select(0, index))


def drop_leading(cache, n: int) -> None:
    """Removes n leading positions (padding of every row once the longest rows have left)."""
    if n <= 0:
        return
    for layer in _layers(cache):
        if isinstance(layer, AppendableLayer):
            layer.drop_leading(n)
        else:
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

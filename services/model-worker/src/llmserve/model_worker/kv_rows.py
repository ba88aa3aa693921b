"""The KV cache of a batch of sequences: one row per sequence, positions from 0, no padding in front.

All layers' keys and values live in one tensor of shape [layers, 2, rows, kv_heads, capacity, head_dim].
Row r holds its sequence's positions 0 .. length-1 in order, so a position never moves while its
sequence runs, and rotary positions are simply indices. Rows of different lengths share the batch:
attention masks the positions past each row's length.

Memory is allocated uninitialized, and uninitialized memory may hold NaN, which a mask cannot hide
(NaN times a zero weight is NaN): `make_finite` zeroes, once, the positions past a row's length that a
batched decode step will read. `finite[r]` counts the leading positions of row r known to be finite.

Only the positions that were written (or zeroed) are ever resident: rows and capacity are allocated up front by
`ensure`, but untouched memory costs nothing, and a longer capacity copies only the rows in use.
This is the only module that touches the cache's tensors.
"""

from __future__ import annotations

import torch

# Room kept after the longest row when the capacity grows: at least this many positions, or a quarter.
MIN_HEADROOM = 64


class KvRows:
    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, rows: int, dtype: torch.dtype, device: torch.device, granularity: int = 64
    ) -> None:
        # The capacity is always a multiple of `granularity`, so a width rounded up to it always fits.
        self._granularity = granularity
        self._shape = (layers, 2, rows, kv_heads, 0, head_dim)
        self._dtype = dtype
        self._device = device
        self.rows = rows
        self.capacity = 0
        self.data = torch.empty(self._shape, dtype=dtype, device=device)
        # Rows in use below this index: what a capacity change must copy.
        self.used_rows = 0
        self.finite = [0] * rows

    def ensure(self, rows_in_use: int, length: int) -> None:
        """Room for `length` positions in every row; rows below `rows_in_use` keep their contents."""
        self.used_rows = max(self.used_rows, rows_in_use)
        g = self._granularity
        length = -(-length // g) * g
        if length <= self.capacity:
            return
        capacity = -(-(length + max(MIN_HEADROOM, length // 4)) // g) * g
        layers, two, rows, heads, _, dim = self._shape
        data = torch.empty((layers, two, rows, heads, capacity, dim), dtype=self._dtype, device=self._device)
        if self.capacity and self.used_rows:
            data[:, :, : self.used_rows, :, : self.capacity].copy_(self.data[:, :, : self.used_rows])
        self.finite = [min(f, self.capacity) if r < self.used_rows else 0 for r, f in enumerate(self.finite)]
        self.data, self.capacity = data, capacity

    def make_finite(self, lengths: list[int], width: int) -> None:
        """Positions 0 .. width-1 of rows 0 .. len(lengths)-1 hold finite numbers: row r's first
        lengths[r] positions are its sequence's, anything after them never written is zeroed."""
        for r, length in enumerate(lengths):
            if self.finite[r] < width:
                end = width
                self.data[:, :, r, :, max(self.finite[r], length) : end].zero_()
                self.finite[r] = end

    def keys(self, layer: int) -> torch.Tensor:
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.data[layer, 1]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copies row `src`'s first `length` positions into row `dst` (every layer at once)."""
        if src != dst and length > 0:
            self.data[:, :, dst, :, :length].copy_(self.data[:, :, src, :, :length])
            self.finite[dst] = max(self.finite[dst], length)

    def prefix(self, row: int, length: int) -> torch.Tensor:
        """A view of row `row`'s first `length` positions, every layer: [layers, 2, kv_heads, length, head_dim]."""
        return self.data[:, :, row, :, :length]

    def write_prefix(self, row: int, kv: torch.Tensor) -> None:
        """Row `row`'s first positions become `kv` (as `prefix` returns them)."""
        length = kv.shape[3]
        self.data[:, :, row, :, :length].copy_(kv)
        self.finite[row] = max(self.finite[row], length)

    def release(self, rows_in_use: int) -> None:
        """Rows at and above `rows_in_use` are free; an empty cache gives its memory back."""
        self.used_rows = rows_in_use
        if rows_in_use == 0:
            self.data = torch.empty(self._shape, dtype=self._dtype, device=self._device)
            self.capacity = 0
            self.finite = [0] * self.rows

    def nbytes_per_position(self) -> int:
        layers, two, _, heads, _, dim = self._shape
        return layers * two * heads * dim * self.data.element_size()

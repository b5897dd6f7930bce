"""The KV cache: every layer's keys and values for a fixed set of slots (rows).

One buffer per kind, ``(layers, rows, kv_heads, capacity + 1, head_dim)``: a row is one
sequence's positions 0…capacity-1, addressed explicitly, so a prefill writes a run of
positions into one row and a decode step writes one position into every row, each at its
own place. The extra last column is scratch: rows that take no part in a decode step
(free, or still prefilling) write there, so the step keeps the same shapes whichever rows
are busy (what lets ``--compile`` and CUDA graphs capture it once) and never touches a
row's live positions.

``grow`` makes a larger cache holding the same contents (more positions, more rows): a
conversation's history and the other sequences in flight survive it.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        shape = (layers, rows, kv_heads, capacity + 1, head_dim)
        # Buffers: torch.compile treats them as the model's state, updated in place.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # (capacity + 1,) 0…capacity: compared with positions to build decode masks.
        self.register_buffer("columns", torch.arange(capacity + 1, device=device), persistent=False)
        self.register_buffer("row_index", torch.arange(rows, device=device), persistent=False)
        self.capacity = capacity

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def scratch(self) -> int:
        """The column idle rows write to in a decode step."""
        return self.capacity

    def write(self, layer: int, row: int, start: int, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A prefill run: k/v (1, kv_heads, seq, head_dim) at positions start…start+seq-1 of
        ``row``; returns that row's keys and values up to the run's end (1, kv_heads, end, dim)."""
        end = start + k.shape[2]
        self.k[layer, row, :, start:end] = k[0]
        self.v[layer, row, :, start:end] = v[0]
        return self.k[layer, row:row + 1, :, :end], self.v[layer, row:row + 1, :, :end]

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode step over the first n rows: k/v (n, kv_heads, 1, head_dim), row r's at
        ``positions[r]``; returns those rows' buffers (n, kv_heads, capacity + 1, head_dim),
        views into the cache (a step over fewer rows than the cache has reads no more)."""
        n = k.shape[0]
        keys, values = self.k[layer, :n], self.v[layer, :n]
        rows = self.row_index[:n]
        keys[rows, :, positions] = k[:, :, 0]
        values[rows, :, positions] = v[:, :, 0]
        return keys, values

    def move(self, source: int, target: int, length: int) -> None:
        """Copy row ``source``'s first ``length`` positions into row ``target`` (compaction:
        a sequence moves down into a freed row so decode steps cover fewer rows)."""
        self.k[:, target, :, :length] = self.k[:, source, :, :length]
        self.v[:, target, :, :length] = self.v[:, source, :, :length]

    def grow(self, capacity: int, rows: int) -> "KVCache":
        """A cache of at least this size with this one's contents (positions beyond the old
        capacity, and new rows, zero). The new buffers are complete before the caller swaps
        them in, so an interruption part-way leaves the old cache whole."""
        capacity, rows = max(capacity, self.capacity), max(rows, self.rows)
        layers, _, kv_heads, _, head_dim = self.k.shape
        grown = KVCache(layers, rows, kv_heads, capacity, head_dim, dtype=self.k.dtype, device=self.k.device)
        old_rows, old = self.rows, self.capacity
        grown.k[:, :old_rows, :, :old] = self.k[:, :, :, :old]
        grown.v[:, :old_rows, :, :old] = self.v[:, :, :, :old]
        return grown

    def extra_repr(self) -> str:
        return f"rows={self.rows}, capacity={self.capacity}"

"""A preallocated KV cache for `NativeEngine`, passed to any transformers causal LM as `past_key_values`.

Each layer owns one key and one value slab of shape (rows, kv_heads, capacity, head_dim), allocated on the first
`update` (the prefill) with capacity = prompt width + max_new_tokens. `update` copies the new states into the slab
and hands the attention a view of the filled part, so decoding never grows a tensor by `torch.cat` (32% of HF
`generate` time on CPU, shared/PERF-NOTES.md point 3). `select(rows)` keeps some rows (finished rows dropped, or
a shared prompt prefill expanded to its n samples) by copying only the filled part.
"""

from __future__ import annotations

from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer


class SlabLayer(DynamicLayer):
    """One layer's preallocated keys and values; `length` positions are filled."""

    is_croppable = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.key_slab: Tensor | None = None
        self.value_slab: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, dim = key_states.shape
        self.key_slab = key_states.new_empty(rows, heads, self.capacity, dim)
        self.value_slab = value_states.new_empty(rows, value_states.shape[1], self.capacity, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        rows = key_states.shape[0]
        self.key_slab[:rows, :, start:end].copy_(key_states)
        self.value_slab[:rows, :, start:end].copy_(value_states)
        self.length = end
        self.keys, self.values = self.key_slab[:rows, :, :end], self.value_slab[:rows, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return self.capacity

    def select(self, rows: Tensor) -> None:
        """Keep `rows` (index tensor, may repeat) of the filled part, in that order."""
        if not self.is_initialized:
            return
        n, end = rows.shape[0], self.length
        if n > self.key_slab.shape[0]:  # expansion (a shared prompt prefill -> n samples): a bigger slab
            for name in ("key_slab", "value_slab"):
                old = getattr(self, name)
                new = old.new_empty(n, *old.shape[1:])
                new[:, :, :end] = old[:, :, :end].index_select(0, rows)
                setattr(self, name, new)
        else:  # compaction in place: gather to a temporary, copy to the front
            for slab in (self.key_slab, self.value_slab):
                slab[:n, :, :end] = slab[:, :, :end].index_select(0, rows)
        self.keys, self.values = self.key_slab[:n, :, :end], self.value_slab[:n, :, :end]

    def batch_select_indices(self, indices: Tensor) -> None:
        self.select(indices)


class SlabCache(Cache):
    """One `SlabLayer` per model layer, created as the model asks for them."""

    def __init__(self, capacity: int):
        super().__init__(layer_class_to_replicate=lambda: SlabLayer(capacity))
        self.capacity = capacity

    def select(self, rows: Tensor) -> None:
        for layer in self.layers:
            layer.select(rows)

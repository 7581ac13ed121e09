"""One layer's keys and values, one class per storage strategy (as transformers' cache layers).

Keys are stored rotated (after RoPE); slot ``i`` has RoPE position ``i``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from .buffers import SlotBuffers


class WindowLayer(CacheLayerMixin):
    """``capacity`` preallocated slots ``(batch, kv_heads, capacity, head_dim)``: appending writes
    slots in place and never copies the cache (a CUDA graph can capture that).

    ``buffers``/``index``: where the slots live when they must outlive this layer (a graph
    captured over them); None: the layer's own.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int, buffers: SlotBuffers | None = None, index: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.buffers = buffers
        self.index = index

    def slots_for(self, seq: int) -> int:
        """Slots to allocate on first use, for a first write of ``seq`` entries."""
        return self.capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, seq, _ = key_states.shape
        slots = self.slots_for(seq)
        keys_shape = (batch, heads, slots, key_states.shape[-1])
        values_shape = (batch, heads, slots, value_states.shape[-1])
        if self.buffers is not None:
            self.keys, self.values = self.buffers.take(self.index, keys_shape, values_shape, key_states)
        else:
            self.keys, self.values = key_states.new_empty(keys_shape), value_states.new_empty(values_shape)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def make_room(self, needed: int) -> None:
        raise RuntimeError(f"window overflow: {needed} > {self.capacity}; the engine must compress first")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.keys.shape[-2]:
            self.make_room(end)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def hold(self, length: int) -> None:
        """The first ``length`` slots hold the entries (a replayed round rewrote them in place)."""
        if not 0 <= length <= self.keys.shape[-2]:
            raise RuntimeError(f"{length} entries do not fit {self.keys.shape[-2]} slots")
        self.length = length

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite slots from ``start`` with ``keys``/``values`` ``(B, H, n, D)``; the layer then
        ends there (what a compression round leaves)."""
        end = start + keys.shape[-2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.length = end

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held keys (rotated) and values, ``(B, H, length, D)`` views."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_mask_sizes(
        self, query_length: int | torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # older transformers pass cache_position
            query_length = query_length.shape[0]
        return self.length + int(query_length), 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0

    def restore(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold exactly ``keys``/``values`` ``(B, H, n, D)`` (a saved state), in fresh buffers of
        their dtype and device."""
        self.is_initialized = False
        self.length = 0
        self.lazy_initialization(keys, values)
        if keys.shape[-2] > self.keys.shape[-2]:
            self.make_room(keys.shape[-2])
        self.write(0, keys, values)

    def held_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_entry = self.keys[:, :, :1].nbytes + self.values[:, :, :1].nbytes
        return per_entry * self.length

    def reserved_bytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes if self.is_initialized else 0


class GrowingLayer(WindowLayer):
    """No window: the full policy's layer, which grows as tokens come (the exact reference)."""

    def __init__(self) -> None:
        super().__init__(capacity=-1)  # grows, so never in shared buffers

    def slots_for(self, seq: int) -> int:
        return max(256, seq)

    def make_room(self, needed: int) -> None:
        # Grow by a quarter (in 1024-slot steps), not by doubling: the old and new buffers
        # coexist during the copy, and doubling a 16 GiB cache peaked at 48 GiB on the GPU.
        # Where even the spare quarter does not fit, grow to exactly what is needed.
        sizes = [-(-n // 1024) * 1024 for n in (max(needed, self.keys.shape[-2] * 5 // 4), needed)]
        for attempt, slots in enumerate(sizes):
            try:
                keys = self.keys.new_empty((*self.keys.shape[:2], slots, self.keys.shape[-1]))
                values = self.values.new_empty((*self.values.shape[:2], slots, self.values.shape[-1]))
                break
            except torch.OutOfMemoryError:
                keys = values = None  # free the half that was allocated before trying smaller
                if attempt == len(sizes) - 1:
                    raise
        keys[:, :, : self.length] = self.keys[:, :, : self.length]
        values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values

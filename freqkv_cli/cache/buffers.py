"""Slot buffers that outlive a cache: every window a model's engine builds writes the same memory.

A CUDA graph replays the addresses it was captured with. Caches come and go (a reset, a new
question, a loaded memory), so the windows' keys and values live here, one pair per layer,
and a new cache takes the pair its layer had; only a change of shape, dtype or device makes
new ones (and a captured graph then notices the new addresses: :meth:`SlotBuffers.generation`).
"""

from __future__ import annotations

import torch


class SlotBuffers:
    """Per layer, preallocated keys and values ``(batch, kv_heads, slots, head_dim)``.

    New buffers are zeroed: slots past a layer's length are masked in attention, and a masked
    NaN from uninitialised memory would still poison the weighted sum (``0 * NaN``).
    """

    def __init__(self) -> None:
        self._pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.generation = 0  # bumped whenever any buffer is replaced

    def take(
        self, layer: int, keys_shape: tuple[int, ...], values_shape: tuple[int, ...], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s buffers of these shapes, in ``like``'s dtype and on its device."""
        pair = self._pairs.get(layer)
        if pair is not None and _fits(pair[0], keys_shape, like) and _fits(pair[1], values_shape, like):
            return pair
        self._pairs.pop(layer, None)  # free the old pair before the new one is made
        pair = (like.new_zeros(keys_shape), like.new_zeros(values_shape))
        self._pairs[layer] = pair
        self.generation += 1
        return pair

    def pair(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``layer``'s buffers, if made."""
        return self._pairs.get(layer)

    def clear(self) -> None:
        """Drop every buffer (their memory goes back to the allocator)."""
        self._pairs.clear()
        self.generation += 1


def _fits(buffer: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> bool:
    return tuple(buffer.shape) == tuple(shape) and buffer.dtype == like.dtype and buffer.device == like.device

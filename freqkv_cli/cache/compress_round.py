"""One compression round of the freqkv or sink policy, shared by the inference cache (in place,
layers stacked) and the training path (out of place, differentiable)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dct import lowpass
from .rotary import KeyRotation

SlotReader = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def compress_round(
    read: SlotReader,
    *,
    kind: str,
    head: int,
    span: int,
    kept: int,
    window: int,
    rotation: KeyRotation,
    method: str = "auto",
    tf32: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The entries that follow the ``head`` after a round, as ``(keys, values)`` pieces in slot order.

    ``read(start, end)`` gives the rotated keys and the values of slots ``start .. end - 1``,
    shape ``(..., end - start, head_dim)``. freqkv: the ``span`` entries after the head become
    ``kept`` (keys un-rotated, low-passed with the values in float32, re-rotated to their new
    slots); sink: the oldest ``span - kept`` are dropped. Either way the rest shift down.
    Keys come back float32; values float32 where low-passed, else as read.
    """
    pieces = []
    if kind == "freqkv":
        keys, values = read(head, head + span)
        device = keys.device
        old = torch.arange(head, head + span, device=device)
        both = torch.cat([rotation.unrotate(keys.float(), old), values.float()])
        low = lowpass(both, kept, -2, method, tf32=tf32)
        count = keys.shape[0]
        pieces.append(
            (rotation.rotate(low[:count], torch.arange(head, head + kept, device=device)), low[count:])
        )
        moved_from, moved_to = head + span, head + kept
    else:  # sink: drop the oldest span - kept entries after the head, shift the rest down
        moved_from, moved_to = head + span - kept, head
    if moved_from < window:
        keys, values = read(moved_from, window)
        pieces.append((rotation.shift(keys.float(), moved_from, moved_to), values))
    return pieces

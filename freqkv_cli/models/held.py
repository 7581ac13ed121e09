"""What a model's weight holds on its device, quantization states included."""

from __future__ import annotations

import torch


def held_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` and what bitsandbytes keeps beside it, outside the module's parameters: a 4-bit
    weight's absmax a block and its code (with double quantization, theirs too), an 8-bit
    weight's scale a row. NF4's absmax alone is an eighth of the packed weights' bytes."""
    held = [tensor]
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        held += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
        state = state.state2 if state.nested else None
    scales = getattr(tensor, "SCB", None)
    if isinstance(scales, torch.Tensor):
        held.append(scales)
    return held

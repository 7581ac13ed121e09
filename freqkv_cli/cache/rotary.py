"""Moving rotated keys to new positions with the model's own rotary embedding.

Keys are cached after RoPE. To compress or shift them, undo the rotation at the old
positions and apply it at the new ones. The model's ``rotary_emb`` module gives cos/sin
with its inv_freq, rope scaling and attention scaling, so nothing is re-derived here.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` rotated by ``cos``/``sin`` (as the model's rotary module gives them, scaling included)."""
    return x * cos + rotate_half(x) * sin


def unrotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scaling: float) -> torch.Tensor:
    """The inverse of :func:`rotated`: cos/sin carry the scaling s, so rotated(x) = s * R(p) x and
    its inverse is R(-p) x / s^2 applied to it."""
    return (x * cos - rotate_half(x) * sin) / (scaling * scaling)


class KeyRotation:
    """Rotate / un-rotate keys of shape ``(batch, heads, seq, head_dim)`` at given positions.

    Works in float32. ``rotary_emb(x, position_ids)`` must return ``cos, sin`` of shape
    ``(1, seq, head_dim)``, scaled by the module's ``attention_scaling`` (as Llama, Mistral,
    Qwen2 and Qwen3 do).
    """

    def __init__(self, rotary_emb: nn.Module) -> None:
        self.rotary_emb = rotary_emb
        self.scaling = float(getattr(rotary_emb, "attention_scaling", 1.0))

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` ``(seq,)`` -> ``(1, 1, seq, head_dim)``; any other shape ``(..., seq)``
        (e.g. per batch and head) -> ``(..., seq, head_dim)``."""
        probe = torch.empty(0, dtype=torch.float32, device=positions.device)
        cos, sin = self.rotary_emb(probe, positions.reshape(1, -1))
        if positions.dim() == 1:
            return cos[:, None].float(), sin[:, None].float()
        shape = (*positions.shape, cos.shape[-1])
        return cos.reshape(shape).float(), sin.reshape(shape).float()

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(positions)
        cos, sin = cos.to(x.device), sin.to(x.device)  # a device map's hook may compute them elsewhere
        return rotated(x, cos, sin)

    def unrotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(positions)
        return unrotated(x, cos.to(x.device), sin.to(x.device), self.scaling)

    def shift(self, x: torch.Tensor, old_start: int, new_start: int) -> torch.Tensor:
        """Move keys from positions ``old_start + i`` to ``new_start + i``."""
        seq = x.shape[-2]
        old = torch.arange(old_start, old_start + seq, device=x.device)
        return self.rotate(self.unrotate(x, old), old - (old_start - new_start))

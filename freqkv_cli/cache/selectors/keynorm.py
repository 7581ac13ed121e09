"""Low key norm: query-agnostic, what the attention selector falls back on before a question."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Candidates, Selector


@dataclass
class KeyNormSelector(Selector):
    """Scores ``-||k||``, standardized per layer and KV head, averaged over both: tokens with low
    key norm draw much attention (KnormPress); every layer and KV head counts the same."""

    def score(self, candidates: Candidates) -> torch.Tensor:
        norms = torch.stack(
            [  # to one device: a device map spreads the layers
                candidates.layer_keys(i).float().norm(dim=-1).to(candidates.device)
                for i in range(len(candidates.keys))
            ]
        )  # (layers, B, Hkv, n)
        return standardize(-norms).mean(dim=(0, 2))


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Scores of one layer made comparable with other layers': zero mean, unit spread per head."""
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-6)

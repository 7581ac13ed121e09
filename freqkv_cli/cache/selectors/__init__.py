"""Ways of choosing the exact slots of a hybrid cache, one class each (see ``base.Selector``)."""

from __future__ import annotations

import torch

from ..policy import CachePolicy
from ..rotary import KeyRotation
from .attention import AttentionSelector
from .base import Candidates, Selector
from .keynorm import KeyNormSelector
from .random import RandomSelector
from .surprise import SurpriseSelector

__all__ = [
    "AttentionSelector",
    "Candidates",
    "KeyNormSelector",
    "RandomSelector",
    "Selector",
    "SurpriseSelector",
    "make_selector",
]


def make_selector(policy: CachePolicy, rotary_emb: torch.nn.Module) -> Selector:
    """The selector ``policy.selector`` names (one of :data:`..policy.SELECTORS`)."""
    makers = {
        "attention": lambda: AttentionSelector(rotation=KeyRotation(rotary_emb), window=policy.window),
        "keynorm": KeyNormSelector,
        "surprise": lambda: SurpriseSelector(window=policy.window),
        "random": lambda: RandomSelector(seed=policy.seed),
    }
    return makers[policy.selector]()

"""Spans at random: what fine-tuning with the hybrid in the loop uses (plain text has no
question to aim at), and the tests that replay a training schedule through the cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..state import State
from .base import Candidates, Selector


@dataclass
class RandomSelector(Selector):
    """Seeded noise ``(1, n)``, drawn on the host so training and inference draw the same."""

    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def score(self, candidates: Candidates) -> torch.Tensor:
        noise = torch.rand(1, candidates.count, generator=self.generator)
        return noise.to(candidates.device)

    def reset(self) -> None:
        super().reset()
        self.generator.manual_seed(self.seed)

    def state(self) -> State:
        state = super().state()
        state.tensors["generator"] = self.generator.get_state().clone()
        return state

    def load_state(self, state: State, device: torch.device) -> None:
        super().load_state(state, device)
        self.generator.set_state(state.tensors["generator"].cpu())

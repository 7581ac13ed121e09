"""The tokens the model predicted worst: names, numbers and dates a question may ask for are
the tokens a language model finds least expected (experimental)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..state import State, tensors_of
from .base import Candidates, Selector
from .keynorm import KeyNormSelector


@dataclass
class SurpriseSelector(Selector):
    """Scores each slot by the NLL its token had when read; key norm until anything was read.

    window: N, the slots a layer holds. ``nll`` ``(B, N)``: the NLL of the token in each slot.
    """

    window: int = 4096
    fallback: Selector = field(default_factory=KeyNormSelector)
    nll: torch.Tensor | None = field(init=False, default=None, repr=False)

    def score(self, candidates: Candidates) -> torch.Tensor:
        if self.nll is None:
            return self.fallback.score(candidates)
        return self.nll[:, candidates.start : candidates.start + candidates.count]

    @torch.inference_mode()
    def observe(
        self,
        start: int,
        chunk: Sequence[int],
        hidden: torch.Tensor,
        previous: torch.Tensor | None,
        logits: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        inputs = hidden[:, :-1] if previous is None else torch.cat([previous[:, None], hidden[:, :-1]], dim=1)
        targets = torch.tensor([list(chunk)], device=hidden.device)
        if previous is None:
            targets = targets[:, 1:]
        nll = -torch.log_softmax(logits(inputs), dim=-1).gather(-1, targets[..., None])[..., 0]
        if previous is None:  # the very first token: nothing predicted it
            nll = torch.cat([nll.new_zeros((nll.shape[0], 1)), nll], dim=1)
        if self.nll is None:
            self.nll = nll.new_zeros((nll.shape[0], self.window))
        self.nll[:, start : start + nll.shape[1]] = nll.float()

    def moved(self, old_start: int, new_start: int, count: int) -> None:
        if self.nll is not None:  # the recent tokens' scores move with them
            self.nll[:, new_start : new_start + count] = self.nll[:, old_start : old_start + count].clone()

    def reset(self) -> None:
        super().reset()
        self.nll = None

    def state(self) -> State:
        state = super().state()
        state.tensors = tensors_of({"nll": self.nll})
        return state

    def load_state(self, state: State, device: torch.device) -> None:
        super().load_state(state, device)
        self.nll = state.tensor("nll", device)

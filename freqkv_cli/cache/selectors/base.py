"""What a way of choosing a hybrid round's exact slots looks like."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..state import State


@dataclass(frozen=True)
class Candidates:
    """The slots a hybrid round may keep exact: ``count`` slots from ``start`` in every layer.

    keys: per layer, the whole key buffer ``(B, Hkv, N, D)`` (rotated, as cached); empty where
          no keys exist (training plans its rounds before any key is computed).
    """

    start: int
    count: int
    device: torch.device
    keys: Sequence[torch.Tensor] = ()

    def layer_keys(self, index: int) -> torch.Tensor:
        """``(B, Hkv, count, D)``: the candidates' keys in layer ``index``."""
        return self.keys[index][:, :, self.start : self.start + self.count]


@dataclass
class Selector:
    """Scores the candidates of a hybrid round; the round keeps the best spans exact.

    One score per candidate slot serves every layer and head (chosen per layer, the early
    layers, whose queries are not yet about meaning, kept other tokens and blurred the needle
    there). The greedy span walk and the competition with exact entries already held are shared
    (:func:`..compress_round.plan_hybrid_round`); a selector only scores.
    """

    asked: bool = False  # a question was asked since the last reset (its passages can be quoted)

    def score(self, candidates: Candidates) -> torch.Tensor:
        """``(B, candidates.count)`` scores, higher is kept first."""
        raise NotImplementedError

    def ask(self, queries: list[torch.Tensor], head_weights: torch.Tensor | None = None) -> None:
        """The question's queries per layer ``(B, Hq, Tq, D)``, pre-RoPE. ``head_weights``
        ``(layers, Hq)``: how much each query head counts (a retrieval-head profile); None: all."""
        self.asked = True

    def observe(
        self,
        start: int,
        chunk: Sequence[int],
        hidden: torch.Tensor,
        previous: torch.Tensor | None,
        logits: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Tokens ``chunk`` were just written to slots ``start ..`` with hidden states ``hidden``
        ``(B, T, D)``; ``previous`` ``(B, D)`` is the hidden state before them, if any."""

    def moved(self, old_start: int, new_start: int, count: int) -> None:
        """A round moved ``count`` entries from slots ``old_start ..`` to ``new_start ..``."""

    def reset(self) -> None:
        self.asked = False

    def state(self) -> State:
        """What this selector has learnt since the last reset (see :mod:`..state`)."""
        return State(facts={"asked": self.asked})

    def load_state(self, state: State, device: torch.device) -> None:
        """Take back what :meth:`state` gave, tensors moved to ``device``."""
        self.asked = bool(state.facts.get("asked", False))

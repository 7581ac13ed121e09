"""Choosing the next token from logits: greedy, or temperature + nucleus (top-p) sampling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import UsageError


@dataclass
class Sampler:
    """``temperature`` 0 means greedy. ``top_p`` in (0, 1]. ``seed`` makes sampling repeatable.

    ``repetition_penalty`` > 1 makes tokens already generated less likely (CTRL-style: a
    positive logit is divided by it, a negative one multiplied); small models otherwise loop.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UsageError(f"temperature {self.temperature} must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top-p {self.top_p} must be in (0, 1]")
        if not self.repetition_penalty >= 1:
            raise UsageError(f"repetition penalty {self.repetition_penalty} must be 1 (off) or more")
        self._generator = torch.Generator()  # on the CPU: same draws on every device
        if self.seed is not None:
            self._generator.manual_seed(self.seed)
        else:
            self._generator.seed()

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """``logits``: ``(vocab,)``; ``history``: tokens generated so far. Returns a token id."""
        if self.repetition_penalty != 1 and history:
            seen = torch.tensor(sorted(set(history)), device=logits.device)
            picked = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(
                picked > 0, picked / self.repetition_penalty, picked * self.repetition_penalty
            )
        if self.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))

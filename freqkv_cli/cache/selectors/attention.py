"""The question's attention, through the model's retrieval heads: which passages answer it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..rotary import KeyRotation
from ..spans import SPAN_LEFT
from ..state import State, tensors_of
from .base import Candidates, Selector
from .keynorm import KeyNormSelector

# Tokens from a span's start whose question match adds up to its score. 8 ranked the answers of
# five novel questions best among 1, 4, 8, 12 and 16.
DENSITY = 8


@dataclass
class AttentionSelector(Selector):
    """Scores how well each candidate matches the question; ``fallback`` until one is asked.

    rotation: the model's rotary embedding; the question's queries are rotated to the last slot
              ``window - 1``: they look back at the candidates as a question asked after the
              text would.
    queries:  per layer ``(B, Hq, Tq, D)``, pre-RoPE (:meth:`ask`).
    head_weights: ``(layers, Hq)``: which query heads score (a retrieval-head profile, see
              :mod:`..head_profile`); None counts every head the same.
    match_stats: count, sum and sum of squares of every match scored since the question.
    """

    rotation: KeyRotation | None = None
    window: int = 4096
    fallback: Selector = field(default_factory=KeyNormSelector)
    queries: list[torch.Tensor] | None = field(init=False, default=None, repr=False)
    head_weights: torch.Tensor | None = field(init=False, default=None, repr=False)
    match_stats: torch.Tensor = field(init=False, repr=False)
    rotated: dict[int, torch.Tensor] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.match_stats = torch.zeros(3, dtype=torch.float64)

    def ask(self, queries: list[torch.Tensor], head_weights: torch.Tensor | None = None) -> None:
        super().ask(queries, head_weights)
        self.queries = queries
        self.match_stats = torch.zeros(3, dtype=torch.float64)  # a new question: new statistics
        self.rotated = {}
        self.head_weights = None if head_weights is None else head_weights.float().cpu()

    def reset(self) -> None:
        super().reset()
        self.queries, self.head_weights, self.rotated = None, None, {}
        self.match_stats = torch.zeros(3, dtype=torch.float64)

    def state(self) -> State:
        state = super().state()
        queries = {f"queries.{i}": q for i, q in enumerate(self.queries or [])}
        state.tensors = tensors_of(
            {**queries, "head_weights": self.head_weights, "match_stats": self.match_stats}
        )
        state.facts["layers"] = len(self.queries) if self.queries is not None else None
        return state

    def load_state(self, state: State, device: torch.device) -> None:
        super().load_state(state, device)
        layers = state.facts.get("layers")
        self.queries = (
            None if layers is None else [state.tensors[f"queries.{i}"].to(device) for i in range(layers)]
        )
        self.head_weights = state.tensor("head_weights")
        self.match_stats = state.tensors["match_stats"].clone()
        self.rotated = {}

    def score(self, candidates: Candidates) -> torch.Tensor:
        """``(B, n)``: the candidate's match (:meth:`question_match`), averaged over the
        retrieval heads of the profile (most heads of a small model attend everywhere; measured
        in docs/BENCHMARKS.md section 6), then summed over a short neighbourhood (:meth:`density`)."""
        if self.queries is None:
            return self.fallback.score(candidates)
        total: torch.Tensor | None = None
        weight_sum = 0.0
        for index in range(len(candidates.keys)):
            weights = None
            if self.head_weights is not None:
                weights = self.head_weights[index]
                if not bool((weights > 0).any()):
                    continue  # no scoring head in this layer: skip its attention entirely
            match = self.question_match(index, candidates.layer_keys(index))
            if weights is None:
                part, weight = match.sum(dim=1), float(match.shape[1])
            else:
                part = torch.einsum("bhn,h->bn", match, weights.to(match.device))
                weight = float(weights.sum())
            part = part.to(candidates.device)  # layers spread by a device map score where they are
            total = part if total is None else total + part
            weight_sum += weight
        assert total is not None, "a head profile must weight at least one head"
        return self.density(total / weight_sum)

    def density(self, match: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` match -> how much above-average match a span starting ``SPAN_LEFT`` before
        each token holds in its first ``DENSITY`` tokens.

        Matches are standardized by the running mean and spread of every candidate scored since
        the question was asked, so scores from different rounds compete fairly for the exact
        slots (a per-round standardization gave each round's best span a top score whatever it
        held). Summing the excess over a neighbourhood favours the passage that matches several
        of the question's words ("dinner party ... held at ... restaurant") over the many that
        repeat one phrase ("farewell dinner"); only excess over one standard deviation counts,
        so background noise does not add up (docs/BENCHMARKS.md section 6).
        """
        values = match.double()
        self.match_stats += torch.stack(
            [values.new_tensor(values.numel()), values.sum(), values.square().sum()]
        ).cpu()
        count, total, squares = self.match_stats.tolist()
        mean = total / count
        spread = math.sqrt(max(squares / count - mean * mean, 1e-12))
        excess = ((match - mean) / spread - 1).clamp(min=0)
        padded = torch.nn.functional.pad(excess, (SPAN_LEFT, DENSITY - 1 - SPAN_LEFT))
        return padded.unfold(-1, DENSITY, 1).sum(dim=-1)

    def logits(self, index: int, keys: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, Tq, n)`` attention logits from each question token to ``keys``
        ``(B, Hkv, n, D)`` of layer ``index``."""
        assert self.queries is not None and self.rotation is not None, "scoring needs a question"
        q = self.rotated.get(index)
        if q is None or q.device != keys.device:  # rotated once per question, not every round
            q = self.queries[index].to(keys.device).float()  # (B, Hq, Tq, D)
            q = self.rotation.rotate(q, torch.full((q.shape[2],), self.window - 1, device=q.device))
            self.rotated[index] = q
        return question_logits(q, keys)

    def question_scores(self, index: int, keys: torch.Tensor) -> torch.Tensor:
        """Attention ``(B, Hq, n)`` per query head from the question to ``keys`` of layer
        ``index``, averaged over the question's tokens (what head calibration ranks)."""
        return torch.softmax(self.logits(index, keys), dim=-1).mean(dim=2)

    def question_match(self, index: int, keys: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, n)``: each candidate's best attention logit from any question token. A logit,
        not a softmax share: it does not depend on what else this round holds, so a round full
        of near-matches cannot crowd out the passage that answers."""
        return self.logits(index, keys).amax(dim=2)


def question_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``(B, Hq, Tq, n)`` scaled dot products of rotated ``queries`` ``(B, Hq, Tq, D)`` with
    ``keys`` ``(B, Hkv, n, D)``, query heads grouped over the KV heads they share (GQA)."""
    batch, heads, tq, dim = queries.shape
    kv_heads = keys.shape[1]
    grouped = queries.view(batch, kv_heads, heads // kv_heads, tq, dim)
    logits = torch.einsum("bhgtd,bhnd->bhgtn", grouped, keys.float()) / math.sqrt(dim)
    return logits.flatten(1, 2)

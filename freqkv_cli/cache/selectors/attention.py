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
    stack_bytes: the float32 logits and keys a stacked group of layers may hold while scoring;
              None: 64 MiB off CPUs, one layer at a time on CPUs (no launches to save there).
    """

    rotation: KeyRotation | None = None
    window: int = 4096
    stack_bytes: int | None = None
    fallback: Selector = field(default_factory=KeyNormSelector)
    queries: list[torch.Tensor] | None = field(init=False, default=None, repr=False)
    head_weights: torch.Tensor | None = field(init=False, default=None, repr=False)
    match_stats: torch.Tensor = field(init=False, repr=False)
    rotated: dict[int, torch.Tensor] = field(init=False, default_factory=dict, repr=False)
    stacked: dict[tuple, torch.Tensor] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.match_stats = torch.zeros(3, dtype=torch.float64)

    def ask(self, queries: list[torch.Tensor], head_weights: torch.Tensor | None = None) -> None:
        super().ask(queries, head_weights)
        self.queries = queries
        self.match_stats = torch.zeros(3, dtype=torch.float64)  # a new question: new statistics
        self.rotated, self.stacked = {}, {}
        self.head_weights = None if head_weights is None else head_weights.float().cpu()

    def reset(self) -> None:
        super().reset()
        self.queries, self.head_weights, self.rotated, self.stacked = None, None, {}, {}
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
        self.rotated, self.stacked = {}, {}

    def score(self, candidates: Candidates) -> torch.Tensor:
        """``(B, n)``: each candidate's match (as :meth:`question_match`), averaged over the
        retrieval heads of the profile (most heads of a small model attend everywhere; measured
        in docs/BENCHMARKS.md section 6), then summed over a short neighbourhood (:meth:`density`).

        Layers are scored in stacked groups (:meth:`groups`): a few products a round instead of a
        handful of kernels per layer, which a small model's round is mostly made of."""
        if self.queries is None:
            return self.fallback.score(candidates)
        scoring = [  # a layer without a scoring head is skipped entirely
            index
            for index in range(len(candidates.keys))
            if self.head_weights is None or bool((self.head_weights[index] > 0).any())
        ]
        assert scoring, "a head profile must weight at least one head"
        total: torch.Tensor | None = None
        for group in self.groups(scoring, candidates):
            keys = torch.stack([candidates.layer_keys(index) for index in group])  # (G, B, Hkv, n, D)
            here = [index for index in scoring if candidates.keys[index].device == keys.device]
            queries = self.rotated_queries(here, keys.device)[here.index(group[0]) :][: len(group)]
            match = question_logits(queries, keys).amax(dim=-2)
            if self.head_weights is None:
                part = match.sum(dim=(0, 2))
            else:
                weights = self.head_weights[group].to(match.device)  # (G, Hq)
                part = torch.einsum("lbhn,lh->bn", match, weights)
            part = part.to(candidates.device)  # layers spread by a device map score where they are
            total = part if total is None else total + part
        assert total is not None
        if self.head_weights is None:
            weight_sum = float(len(scoring) * self.queries[0].shape[1])
        else:
            weight_sum = float(self.head_weights[scoring].sum())
        return self.density(total / weight_sum)

    def groups(self, scoring: list[int], candidates: Candidates) -> list[list[int]]:
        """Runs of successive ``scoring`` layers on one device, stacked when scored, each holding
        at most ``stack_bytes`` of float32 logits and keys."""
        assert self.queries is not None
        batch, heads, tokens, dim = self.queries[0].shape
        kv_heads = candidates.keys[scoring[0]].shape[1]
        per_layer = batch * candidates.count * 4 * (heads * tokens + 2 * kv_heads * dim)
        budget = self.stack_bytes
        if budget is None:
            budget = 0 if candidates.keys[scoring[0]].device.type == "cpu" else 64 << 20
        size = max(1, budget // max(per_layer, 1))
        runs: list[list[int]] = []
        for index in scoring:
            device = candidates.keys[index].device
            last = runs[-1] if runs else None
            if last and len(last) < size and candidates.keys[last[0]].device == device:
                last.append(index)
            else:
                runs.append([index])
        return runs

    def rotated_queries(self, layers: list[int], device: torch.device) -> torch.Tensor:
        """``(len(layers), B, Hq, Tq, D)`` float32: the question's queries of ``layers`` (the
        scoring layers on ``device``) rotated to the last slot, stacked once per question: each
        group scores a slice of it, so the question is held once, not once per grouping."""
        key = (tuple(layers), str(device))
        stacked = self.stacked.get(key)
        if stacked is None:
            stacked = torch.stack([self._rotate(index, device) for index in layers])
            self.stacked[key] = stacked
        return stacked

    def rotated_query(self, index: int, device: torch.device) -> torch.Tensor:
        """``(B, Hq, Tq, D)`` float32: layer ``index``'s question queries rotated to the last slot
        (kept for the per-layer readouts, :meth:`logits`)."""
        q = self.rotated.get(index)
        if q is None or q.device != device:  # rotated once per question, not every round
            q = self.rotated[index] = self._rotate(index, device)
        return q

    def _rotate(self, index: int, device: torch.device) -> torch.Tensor:
        assert self.queries is not None and self.rotation is not None, "scoring needs a question"
        q = self.queries[index].to(device).float()  # (B, Hq, Tq, D)
        return self.rotation.rotate(q, torch.full((q.shape[2],), self.window - 1, device=q.device))

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
        return question_logits(self.rotated_query(index, keys.device), keys)

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
    """``(..., B, Hq, Tq, n)`` scaled dot products of rotated ``queries`` ``(..., B, Hq, Tq, D)``
    with ``keys`` ``(..., B, Hkv, n, D)`` (leading axes: stacked layers), query heads grouped over
    the KV heads they share (GQA)."""
    heads, dim = queries.shape[-3], queries.shape[-1]
    kv_heads = keys.shape[-3]
    grouped = queries.unflatten(-3, (kv_heads, heads // kv_heads))
    logits = torch.einsum("...hgtd,...hnd->...hgtn", grouped, keys.float()) / math.sqrt(dim)
    return logits.flatten(-4, -3)

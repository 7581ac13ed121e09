"""The hybrid's rounds: FreqKV's schedule with up to ``E`` of the entries it keeps left exact.

Layout of every layer: ``[head | exact e | compressed c | tail (exact, in stream order)]``; one
choice of exact entries for all layers and heads, made by a :class:`.selectors.Selector`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, field

import torch

from .compress_round import HybridPlan, HybridState, gather_slots, hybrid_round, plan_hybrid_round
from .layers import WindowLayer
from .policy import CachePolicy
from .rounds import RoundPlan, Rounds, allows_tf32, device_groups, read_stacked, write_pieces
from .selectors import Candidates, Selector
from .state import State, tensors_of


@dataclass
class HybridRounds(Rounds):
    """Scores the tail tokens leaving the recent window (``selector``), keeps the best spans in
    the exact slots (in stream order) and low-passes the rest with the compressed part."""

    selector: Selector = field(default_factory=Selector)
    held: HybridState = field(default_factory=HybridState)  # exact and compressed entries now

    def plan(
        self, layers: Sequence[WindowLayer], policy: CachePolicy, head: int, tokens_seen: int
    ) -> RoundPlan:
        """Score the candidates and choose (on the host: the span walk); the state moves on."""
        window, recent = policy.window, policy.recent
        tail = self.held.tail(head)
        device = layers[0].keys.device
        keys = [layer.keys for layer in layers]
        candidates = Candidates(tail, self.held.candidates(policy, head), device, keys)
        scores = self.selector.score(candidates)  # (B, n)
        plan, self.held = plan_hybrid_round(self.held, scores, policy, head=head, tokens_seen=tokens_seen)
        self.selector.moved(window - recent, plan.length - recent, recent)
        shapes = (plan.new_e, plan.stream_from.shape[-1], plan.exact_from.shape[0])
        return RoundPlan(
            (type(self).__name__, self.method, astuple(policy), head, *shapes, plan.kept),
            head,
            {"exact_from": plan.exact_from, "stream_from": plan.stream_from},
            {"kept": plan.kept},
        )

    def apply(self, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan) -> None:
        slots = plan.inputs
        kept, recent, window = plan.sizes["kept"], policy.recent, policy.window
        chosen = HybridPlan(plan.head, slots["exact_from"], slots["stream_from"], kept, recent, window)
        tf32 = allows_tf32(layers)
        for part in device_groups(layers, self.group(layers, policy.window)):
            here = chosen.to(part[0].keys.device)  # the plan is small; the cache stays where it is
            # One stacked copy per group, gathered from: two gathers a round, not two per layer.
            keys, values = read_stacked(part, 0, policy.window)  # (layers, B, H, N, D)

            def gather(slots: torch.Tensor, k: torch.Tensor = keys, v: torch.Tensor = values) -> tuple:
                return gather_slots(k, slots), gather_slots(v, slots)

            def read(begin: int, end: int, k: torch.Tensor = keys, v: torch.Tensor = values) -> tuple:
                return k[..., begin:end, :], v[..., begin:end, :]

            pieces = hybrid_round(gather, read, here, self.rotation, method=self.method, tf32=tf32)
            write_pieces(part, plan.head, pieces)  # everything was read above: now overwrite

    @staticmethod
    def group(layers: Sequence[WindowLayer], window: int) -> int:
        """Layers per stacked step: one on CPUs (measured fastest, as for FreqKV); on GPUs as many
        as keep each float32 scratch tensor under 64 MiB. A small model's round is mostly kernel
        launches (all its layers fit one step), a 7B model's is memory traffic, and a round holds
        several such tensors at once (with 256 MiB an 8B model's peak was 1.6 GiB above FreqKV's)."""
        keys = layers[0].keys
        if keys.device.type == "cpu":
            return 1
        per_layer = keys.shape[0] * keys.shape[1] * window * keys.shape[-1] * 4
        return max(1, min(len(layers), (64 << 20) // max(per_layer, 1)))

    def reset(self) -> None:
        self.held = HybridState()
        self.selector.reset()

    def state(self) -> State:
        held = self.held
        state = State(tensors_of({"tokens": held.tokens, "scores": held.scores}), {"e": held.e, "c": held.c})
        state.put("selector", self.selector.state())
        return state

    def load_state(self, state: State, device: torch.device) -> None:
        facts = state.facts
        tokens, scores = state.tensor("tokens", device), state.tensor("scores", device)
        self.held = HybridState(int(facts["e"]), int(facts["c"]), tokens, scores)
        self.selector.load_state(state.get("selector"), device)

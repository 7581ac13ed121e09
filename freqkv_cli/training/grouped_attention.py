"""FreqKV attention for training: one forward pass over a whole sequence, differentiable.

The inference engine streams a sequence group by group through a fixed cache, writing in
place under ``inference_mode``. Training needs gradients through every compression, so
here the model runs ONE forward over the whole training sequence and each attention layer
replays the window schedule on its own keys and values, out of place:

    group 0: the first N tokens, causal attention, positions 0..N-1
    group g: compress the layer's cache (N entries -> S + L + R), then the next F - L
             tokens attend to the cache and causally to each other, positions S+L+R..N-1

Everything outside attention (projections, MLPs, norms) runs on the full sequence at once,
so it is as fast as plain training; per-layer gradient checkpointing works unchanged
because a layer's schedule depends only on that layer's inputs. The logits equal the
inference engine's on the same sequence (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..cache.compress_round import (
    HybridPlan,
    HybridState,
    compress_round,
    gather_slots,
    hybrid_round,
    plan_hybrid_round,
)
from ..cache.policy import CachePolicy
from ..cache.rotary import KeyRotation
from ..cache.selectors import Candidates, RandomSelector

ATTENTION_NAME = "freqkv_grouped"
SCHEDULE_KWARG = "freqkv_schedule"


@dataclass
class GroupSchedule:
    """The window schedule of one training sequence of ``length`` tokens.

    policy:   the inference policy (``freqkv``, ``sink``, or ``hybrid`` with random spans: the
              selector's seed picks them, one plan per round for every layer), applied exactly.
    rotation: the model's own rotary embedding, to move rotated keys to new slots.
    groups:   ``[(start, end), ...]`` token ranges; group 0 fills the window, later ones
              are ``F - L`` tokens each (the last may be shorter).
    positions: ``(length,)`` long tensor, the RoPE position (slot) of every token.
    """

    policy: CachePolicy
    rotation: KeyRotation
    groups: list[tuple[int, int]]
    positions: torch.Tensor
    lowpass_method: str = "auto"
    plans: list[HybridPlan] | None = None  # hybrid: one per round, shared by every layer

    @classmethod
    def build(
        cls, policy: CachePolicy, rotary_emb: nn.Module, length: int, device: torch.device | str = "cpu"
    ) -> GroupSchedule:
        if policy.kind not in ("freqkv", "sink", "hybrid"):
            raise ValueError(f"training runs the freqkv, sink or hybrid policy, not {policy.kind!r}")
        if policy.kind == "hybrid" and policy.selector != "random":
            raise ValueError("training runs the hybrid policy with random spans (selector='random')")
        groups, positions = [], []
        plans: list[HybridPlan] = []
        state = HybridState()
        selector = RandomSelector(seed=policy.seed)
        host = torch.device("cpu")
        start, filled = 0, 0
        while start < length:
            if start:  # a round before every group but the first
                if policy.kind == "hybrid":
                    # The same selector, plan and noise as WindowedCache with this policy.
                    head = policy.sink
                    candidates = Candidates(state.tail(head), state.candidates(policy, head), host)
                    scores = selector.score(candidates)
                    plan, state = plan_hybrid_round(state, scores, policy, head=head, tokens_seen=start)
                    plans.append(_to(plan, device))
                    filled = plan.length
                else:
                    filled = policy.sink + policy.kept() + policy.recent  # what a compression leaves
            size = min(policy.window - filled, length - start)
            groups.append((start, start + size))
            positions.append(torch.arange(filled, filled + size))
            start += size
        pos = torch.cat(positions).to(device) if positions else torch.empty(0, dtype=torch.long)
        return cls(
            policy, KeyRotation(rotary_emb), groups, pos, plans=plans if policy.kind == "hybrid" else None
        )

    # -- one compression round on (batch, kv_heads, N, head_dim) keys and values --------
    def compress(
        self, keys: torch.Tensor, values: torch.Tensor, index: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Round ``index`` of the inference schedule (:func:`compress_round`, or
        :func:`hybrid_round` with this round's plan), out of place, so autograd follows it."""
        policy, head = self.policy, self.policy.sink
        if self.plans is not None:
            plan = self.plans[index]
            batch = keys.shape[0]

            def gather(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return gather_slots(keys, slots), gather_slots(values, slots)

            pieces = hybrid_round(
                gather,
                lambda begin, end: (keys[:, :, begin:end], values[:, :, begin:end]),
                _expand(plan, batch),
                self.rotation,
                method=self.lowpass_method,
            )
        else:
            pieces = compress_round(
                lambda begin, end: (keys[:, :, begin:end], values[:, :, begin:end]),
                kind=policy.kind,
                head=head,
                span=policy.span(),
                kept=policy.kept(),
                window=keys.shape[-2],
                rotation=self.rotation,
                method=self.lowpass_method,
            )
        all_keys = [keys[:, :, :head], *(k.to(keys.dtype) for k, _ in pieces)]
        all_values = [values[:, :, :head], *(v.to(values.dtype) for _, v in pieces)]
        return torch.cat(all_keys, dim=-2), torch.cat(all_values, dim=-2)


def _to(plan: HybridPlan, device: torch.device | str) -> HybridPlan:
    return replace(plan, exact_from=plan.exact_from.to(device), stream_from=plan.stream_from.to(device))


def _expand(plan: HybridPlan, batch: int) -> HybridPlan:
    """A plan made for one sequence, for every sequence of a batch (they share the schedule)."""
    return replace(
        plan, exact_from=plan.exact_from.expand(batch, -1), stream_from=plan.stream_from.expand(batch, -1)
    )


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function. ``query`` ``(B, H, T, D)``, ``key``/``value`` ``(B, Hkv, T, D)``,
    rotated at the schedule's positions; returns ``(B, T, H, D)``.

    Needs ``freqkv_schedule=GroupSchedule`` among the forward kwargs. The causal mask is
    built here (transformers builds none for an attention name it does not know).
    """
    schedule = kwargs.get(SCHEDULE_KWARG)
    if not isinstance(schedule, GroupSchedule):
        raise RuntimeError(f"{ATTENTION_NAME} attention needs {SCHEDULE_KWARG}=GroupSchedule(...)")
    if query.shape[-2] != schedule.groups[-1][1]:
        raise RuntimeError(f"schedule is for {schedule.groups[-1][1]} tokens, got {query.shape[-2]}")
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    cache_k = cache_v = None
    for group, (start, end) in enumerate(schedule.groups):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if cache_k is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
            cache_k, cache_v = k, v
        else:
            cache_k, cache_v = schedule.compress(cache_k, cache_v, group - 1)
            held, size = cache_k.shape[-2], end - start
            keys = torch.cat([cache_k, k], dim=-2)
            values = torch.cat([cache_v, v], dim=-2)
            # Row i sees the whole cache and new tokens 0..i.
            cols = torch.arange(held + size, device=q.device)
            mask = cols[None, :] <= (held + torch.arange(size, device=q.device))[:, None]
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=scaling, enable_gqa=gqa
            )
            cache_k, cache_v = keys, values
        outputs.append(out)
    return torch.cat(outputs, dim=-2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``ATTENTION_NAME`` known to transformers (idempotent). No mask function is registered
    on purpose: transformers then passes no mask, and :func:`grouped_attention` builds its own."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, grouped_attention)

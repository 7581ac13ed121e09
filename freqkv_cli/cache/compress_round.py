"""One compression round (freqkv, sink, hybrid), shared by the inference cache (in place, layers
stacked) and the training path (out of place, differentiable)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .dct import lowpass
from .policy import CachePolicy
from .rotary import KeyRotation
from .spans import select_spans

SlotReader = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def compress_round(
    read: SlotReader,
    *,
    kind: str,
    head: int,
    span: int,
    kept: int,
    window: int,
    rotation: KeyRotation,
    method: str = "auto",
    tf32: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The entries that follow the ``head`` after a round, as ``(keys, values)`` pieces in slot order.

    ``read(start, end)`` gives the rotated keys and the values of slots ``start .. end - 1``,
    shape ``(..., end - start, head_dim)``. freqkv: the ``span`` entries after the head become
    ``kept`` (keys un-rotated, low-passed with the values in float32, re-rotated to their new
    slots); sink: the oldest ``span - kept`` are dropped. Either way the rest shift down.
    Keys come back float32; values float32 where low-passed, else as read.
    """
    pieces = []
    if kind == "freqkv":
        keys, values = read(head, head + span)
        device = keys.device
        old = torch.arange(head, head + span, device=device)
        both = torch.cat([rotation.unrotate(keys.float(), old), values.float()])
        low = lowpass(both, kept, -2, method, tf32=tf32)
        count = keys.shape[0]
        pieces.append(
            (rotation.rotate(low[:count], torch.arange(head, head + kept, device=device)), low[count:])
        )
        moved_from, moved_to = head + span, head + kept
    else:  # sink: drop the oldest span - kept entries after the head, shift the rest down
        moved_from, moved_to = head + span - kept, head
    if moved_from < window:
        keys, values = read(moved_from, window)
        pieces.append((rotation.shift(keys.float(), moved_from, moved_to), values))
    return pieces


@dataclass(frozen=True)
class HybridPlan:
    """Where every entry goes in one hybrid round; the same for every layer and head.

    exact_from:  ``(B, new_e)`` slots that become the exact part, in stream order.
    stream_from: ``(B, z)`` slots low-passed into ``kept`` entries (the compressed part, then
                 the candidates not picked, in stream order); ``new_e + kept`` is FreqKV's L.
    After the round a layer holds ``[head | exact new_e | low kept | recent]``.
    """

    head: int
    exact_from: torch.Tensor
    stream_from: torch.Tensor
    kept: int
    recent: int
    window: int

    def to(self, device: torch.device) -> HybridPlan:
        """The same plan with its slot indices on ``device`` (layers spread over devices)."""
        if self.exact_from.device == device:
            return self
        return replace(self, exact_from=self.exact_from.to(device), stream_from=self.stream_from.to(device))

    @property
    def new_e(self) -> int:
        return self.exact_from.shape[-1]

    @property
    def length(self) -> int:
        return self.head + self.new_e + self.kept + self.recent


@dataclass
class HybridState:
    """What a hybrid cache remembers between rounds: ``e`` exact and ``c`` compressed entries
    after the head; ``tokens`` ``(B, e)`` stream index and ``scores`` ``(B, e)`` of each exact one."""

    e: int = 0
    c: int = 0
    tokens: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    def tail(self, head: int) -> int:
        """The first slot never compressed nor kept exact: where this round's candidates start."""
        return head + self.e + self.c

    def candidates(self, policy: CachePolicy, head: int) -> int:
        """How many slots a round may pick from: those between the tail and the recent window."""
        return policy.window - policy.recent - self.tail(head)


def plan_hybrid_round(
    state: HybridState, scores: torch.Tensor, policy: CachePolicy, *, head: int, tokens_seen: int
) -> tuple[HybridPlan, HybridState]:
    """Plan one round from ``scores`` ``(B, n)`` of the ``n`` candidates
    (:meth:`HybridState.candidates`), picked in spans (:func:`.spans.select_spans`). The new picks
    and the exact entries already held compete; the best ``policy.exact_slots()`` stay, in stream
    order."""
    e, c = state.e, state.c
    window, recent = policy.window, policy.recent
    tail = state.tail(head)
    candidates = state.candidates(policy, head)
    take = min(policy.quota(), candidates)
    new_e = min(policy.exact_slots(), e + take)
    z = c + candidates - take
    # FreqKV's schedule: a round leaves L = floor(F * r) entries between the head and the recent
    # window, the exact ones among them, so every round frees what a FreqKV round frees.
    kept = min(z, max(1, math.floor((window - head - recent) * policy.ratio) - new_e))
    first_token = tokens_seen - (window - tail)  # stream index of slot `tail`
    top, span_score = select_spans(scores, take)
    device, batch = top.device, top.shape[0]
    old_tokens = (
        state.tokens if state.tokens is not None else torch.empty(batch, 0, dtype=torch.long, device=device)
    )
    old_scores = state.scores if state.scores is not None else torch.empty(batch, 0, device=device)
    pool_tok = torch.cat([old_tokens, first_token + top], dim=-1)
    pool_score = torch.cat([old_scores, span_score.float()], dim=-1)
    pool_slot = torch.cat([torch.arange(head, head + e, device=device).expand(batch, e), tail + top], -1)
    keep = pool_score.topk(new_e, dim=-1).indices
    keep = keep.gather(-1, pool_tok.gather(-1, keep).argsort(dim=-1))  # stream order
    # The candidates not picked, in order: a stable sort of the mask lists them without a host sync.
    picked = torch.zeros(batch, candidates, dtype=torch.bool, device=device).scatter_(-1, top, True)
    rest = (~picked).to(torch.int8).argsort(dim=-1, descending=True, stable=True)[:, : candidates - take]
    stream_from = torch.cat([torch.arange(head + e, tail, device=device).expand(batch, c), tail + rest], -1)
    plan = HybridPlan(head, pool_slot.gather(-1, keep), stream_from, kept, recent, window)
    return plan, HybridState(new_e, kept, pool_tok.gather(-1, keep), pool_score.gather(-1, keep))


def hybrid_round(
    gather: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    read: SlotReader,
    plan: HybridPlan,
    rotation: KeyRotation,
    *,
    method: str = "auto",
    tf32: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The entries that follow the head after a hybrid round, as ``(keys, values)`` pieces in slot
    order (exact, low-passed, recent). ``gather(slots (B, k))`` gives the rotated keys and the
    values at those slots, ``(..., B, H, k, D)``; ``read`` as in :func:`compress_round`.
    Keys come back float32, low-passed values float32, the others as read."""
    head, new_e, kept = plan.head, plan.new_e, plan.kept
    device = plan.exact_from.device
    ex_k, ex_v = gather(plan.exact_from)
    ex_k = rotation.rotate(
        rotation.unrotate(ex_k.float(), plan.exact_from[:, None]),
        torch.arange(head, head + new_e, device=device),
    )
    st_k, st_v = gather(plan.stream_from)
    # Keys (un-rotated) and values low-passed in one call, stacked on the leading axis.
    count = st_k.shape[0]
    both = torch.cat([rotation.unrotate(st_k.float(), plan.stream_from[:, None]), st_v.float()])
    if plan.stream_from.shape[-1] > 1:
        both = lowpass(both, kept, -2, method, tf32=tf32)
    low_k, low_v = both[:count], both[count:]
    start = head + new_e
    low_k = rotation.rotate(low_k, torch.arange(start, start + kept, device=device))
    moved_from, moved_to = plan.window - plan.recent, start + kept
    rec_k, rec_v = read(moved_from, plan.window)
    rec_k = rotation.shift(rec_k.float(), moved_from, moved_to)
    return [(ex_k, ex_v), (low_k, low_v), (rec_k, rec_v)]


def gather_slots(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., B, H, N, D)``, ``slots`` ``(B, k)`` -> ``(..., B, H, k, D)``: the same slots for
    every head (and every stacked layer)."""
    index = slots[:, None, :, None].expand(*x.shape[:-2], slots.shape[-1], x.shape[-1])
    return x.gather(-2, index)

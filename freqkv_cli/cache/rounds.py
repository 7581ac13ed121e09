"""A compression round over a whole cache, one class per way of compressing.

A round runs between forward calls on a full window; every layer gets the same plan. Layers
go in stacked groups ``(layers, batch, heads, seq, head_dim)``: fewer kernel launches on GPUs,
with bounded float32 scratch; on CPUs one layer at a time measured fastest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, field

import torch

from .compress_round import compress_round
from .layers import WindowLayer
from .policy import CachePolicy
from .rotary import KeyRotation
from .state import State


@dataclass(frozen=True)
class RoundPlan:
    """What a round will do, decided before any entry moves.

    key:    the round's shapes and settings: rounds of one key are the same work on the same
            slots, given ``inputs`` (what lets one replay serve them all).
    head:   leading entries left as they are.
    inputs: device tensors the work reads (the hybrid's slot choice); a replay copies them
            into its own before it runs. Empty where every round of the key is identical.
    sizes:  the counts the work needs besides ``head``.
    """

    key: tuple
    head: int
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Rounds:
    """Compresses a full window in place. ``method``: the low-pass implementation (:mod:`.dct`).

    A round is :meth:`plan` (what the tokens decide: eager, may read scores on the host) then
    :meth:`apply` (moving and low-passing entries: the same kernels for every round of a plan's
    key, so :mod:`.round_graphs` can replay it)."""

    rotation: KeyRotation
    method: str = "auto"

    def plan(
        self, layers: Sequence[WindowLayer], policy: CachePolicy, head: int, tokens_seen: int
    ) -> RoundPlan:
        """Decide the next round of a full window, whose ``head`` leading entries stay as they are
        (and take note of it: a plan is applied once)."""
        raise NotImplementedError

    def apply(self, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan) -> None:
        """Rewrite every layer's entries after ``plan.head`` as ``plan`` says."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what earlier rounds left behind (a new, empty cache)."""

    def state(self) -> State:
        """What later rounds need of earlier ones (see :mod:`.state`)."""
        return State()

    def load_state(self, state: State, device: torch.device) -> None:
        """Take back what :meth:`state` gave."""


@dataclass
class SpanRounds(Rounds):
    """FreqKV (the ``F`` entries after the head low-passed to ``L``) or StreamingLLM's sink
    eviction (the oldest ``F - L`` dropped), as ``kind`` says; the recent entries shift down."""

    kind: str = "freqkv"
    group: int | None = None  # layers per stacked step; None: 1 on CPUs, 4 on GPUs

    def plan(
        self, layers: Sequence[WindowLayer], policy: CachePolicy, head: int, tokens_seen: int
    ) -> RoundPlan:
        return RoundPlan(
            (type(self).__name__, self.kind, self.method, self.group, astuple(policy), head), head
        )

    def apply(self, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan) -> None:
        head = plan.head
        span, kept = policy.span(head), policy.kept(head)
        group = self.group or (1 if layers[0].keys.device.type == "cpu" else 4)
        for part in device_groups(layers, group):
            pieces = compress_round(
                lambda begin, end, part=part: read_stacked(part, begin, end),
                kind=self.kind,
                head=head,
                span=span,
                kept=kept,
                window=policy.window,
                rotation=self.rotation,
                method=self.method,
                tf32=allows_tf32(part),
            )
            write_pieces(part, head, pieces)


def device_groups(layers: Sequence[WindowLayer], group: int) -> list[Sequence[WindowLayer]]:
    """Runs of at most ``group`` consecutive layers on one device: a model spread by a device map
    compresses each layer where its cache lives, and no cache entry crosses devices."""
    parts: list[Sequence[WindowLayer]] = []
    start = 0
    for index in range(1, len(layers) + 1):
        if (
            index == len(layers)
            or index - start == group
            or layers[index].keys.device != layers[start].keys.device
        ):
            parts.append(layers[start:index])
            start = index
    return parts


def allows_tf32(layers: Sequence[WindowLayer]) -> bool:
    """16-bit caches may use TF32 for the DCT matmul (measured on an H100: 112 -> 65 ms a round)."""
    return layers[0].keys.dtype in (torch.bfloat16, torch.float16)


def read_stacked(layers: Sequence[WindowLayer], begin: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of slots ``begin .. end - 1``, stacked over ``layers``: ``(L, B, H, n, D)``."""
    keys = torch.stack([layer.keys[:, :, begin:end] for layer in layers])
    return keys, torch.stack([layer.values[:, :, begin:end] for layer in layers])


def write_pieces(
    layers: Sequence[WindowLayer], head: int, pieces: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Write a round's ``(keys, values)`` pieces (stacked over ``layers``) after the head, in order:
    joined first, so a layer takes two copies whatever the number of pieces (GPU launches)."""
    dtype = layers[0].keys.dtype
    keys = torch.cat([k.to(dtype) for k, _ in pieces], dim=-2)
    values = torch.cat([v.to(dtype) for _, v in pieces], dim=-2)
    for index, layer in enumerate(layers):
        layer.write(head, keys[index], values[index])

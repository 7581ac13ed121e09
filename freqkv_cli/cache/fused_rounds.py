"""FreqKV and sink rounds as three steps a group of layers, the product in float16 on CUDA.

The arithmetic of :func:`.compress_round.compress_round`, in three steps a stacked group of
layers:

1. ``unrotated_span``: the span's keys un-rotated, stacked with its values in float32, laid out
   ``(n, everything)`` for the product: one kernel when compiled (``FREQKV_COMPILE=1``), where
   the eager round makes a dozen float32 passes over the group (an 8B model's group of 4 layers
   holds 0.5 GiB of span);
2. the low-pass as one ``(kept x n) @ (n x everything)`` product. For 16-bit caches on CUDA
   in float16 with float32 accumulation, each column scaled by its largest magnitude first (the
   operator is linear along positions, so scaling a column commutes with it; no overflow
   whatever the keys): float16 keeps TF32's 10-bit mantissa at the tensor cores' 16-bit rate,
   where the TF32 product took 39 of 326 ms per 8k tokens an 8B model read on an H200 (a
   kernel built for sm80, 112 TFLOP/s). Elsewhere float32 (TF32 for 16-bit caches), as the
   eager round;
3. ``rotated_back``: the low-passed keys rotated to their new slots and the recent entries moved
   down, in the cache's dtype: one kernel again when compiled.

cos and sin come from the model's rotary module outside the fused steps, so its position
product keeps full float32 (TF32 is allowed only around the low-pass product).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .dct import lowpass_matmul, lowpass_matrix
from .layers import WindowLayer
from .policy import CachePolicy
from .rotary import rotated, unrotated
from .rounds import RoundPlan, SpanRounds, allows_tf32, device_groups

logger = logging.getLogger(__name__)
_COMPILED: dict[Callable, Callable] = {}


def unrotated_span(
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    scaling: float,
    half: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``keys``/``values``: a group's ``G`` layers' span ``(B, H, n, D)`` (rotated keys); ``cos``/``sin``
    ``(1, 1, n, D)`` at the old positions, carrying the rotary ``scaling``.
    Returns ``(n, 2G, B, H, D)``: un-rotated keys, then values; float32 and None, or with ``half``
    float16 of each column divided by its largest magnitude, and those ``(1, 2G, B, H, D)``."""
    k = unrotated(torch.stack(keys).float(), cos, sin, scaling)
    both = torch.cat([k, torch.stack(values).float()]).movedim(-2, 0)
    if not half:
        return both.contiguous(), None
    scale = both.abs().amax(dim=0, keepdim=True).clamp(min=1e-30)
    return (both / scale).to(torch.float16).contiguous(), scale


def half_product(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` ``(kept, n)`` @ ``x`` ``(n, ...)``, both float16, accumulated and returned in float32."""
    flat = x.reshape(x.shape[0], -1)
    out = None
    if x.is_cuda:
        with contextlib.suppress(TypeError, RuntimeError):  # a torch without out_dtype for mm
            out = torch.mm(matrix, flat, out_dtype=torch.float32)
    if out is None:  # float16 values are exact in float32: the same product, another summation order
        out = matrix.float() @ flat.float()
    return out.reshape(matrix.shape[0], *x.shape[1:])


def rotated_back(
    low: torch.Tensor | None,
    scale: torch.Tensor | None,
    cos_new: torch.Tensor | None,
    sin_new: torch.Tensor | None,
    recent_keys: list[torch.Tensor],
    recent_values: list[torch.Tensor],
    moves: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    scaling: float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What follows the head after the round, stacked ``(G, B, H, kept + r, D)`` in ``dtype``.

    ``low``: the product's ``(kept, 2G, B, H, D)`` (None for sink rounds), keys then values, its
    columns to be multiplied by ``scale`` (None: they are not scaled);
    ``cos_new``/``sin_new`` ``(1, 1, kept, D)``: their new slots. ``recent_*``: each layer's ``r``
    entries that move down (empty lists: none); ``moves``: cos and sin at their old and new slots.
    """
    keys, values = [], []
    if low is not None:
        assert cos_new is not None and sin_new is not None
        if scale is not None:
            low = low * scale
        low = low.movedim(0, -2)
        count = low.shape[0] // 2
        keys.append(rotated(low[:count], cos_new, sin_new))
        values.append(low[count:])
    if recent_keys:
        assert moves is not None
        cos_old, sin_old, cos_to, sin_to = moves
        r = unrotated(torch.stack(recent_keys).float(), cos_old, sin_old, scaling)
        keys.append(rotated(r, cos_to, sin_to))
        values.append(torch.stack(recent_values).float())
    return torch.cat(keys, dim=-2).to(dtype), torch.cat(values, dim=-2).to(dtype)


@dataclass
class FusedSpanRounds(SpanRounds):
    """:class:`.rounds.SpanRounds` with each group's round as the three steps above.

    ``compile``: fuse the two elementwise steps with torch.compile (CUDA only; elsewhere, where
    compiling fails and by default, they run as written, which is the same arithmetic)."""

    compile: bool = False
    half: bool | None = None  # the float16 product; None: on CUDA for 16-bit caches

    def plan(
        self, layers: Sequence[WindowLayer], policy: CachePolicy, head: int, tokens_seen: int
    ) -> RoundPlan:
        plan = super().plan(layers, policy, head, tokens_seen)
        return replace(plan, key=(*plan.key, self.compile, self.half))  # both change the work

    def _run(self, function: Callable, device: torch.device, *args: object) -> object:
        if not (self.compile and device.type == "cuda"):
            return function(*args)
        if function not in _COMPILED:  # one per process: a reset's new cache compiles nothing again
            _COMPILED[function] = torch.compile(function, dynamic=False)
        try:
            return _COMPILED[function](*args)
        except Exception as exc:  # no compiler for this device, say: the same steps unfused
            logger.debug("fusing a round's steps failed, running them unfused: %s", exc)
            self.compile = False
            return function(*args)

    def apply(self, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan) -> None:
        head = plan.head
        group = self.group or (1 if layers[0].keys.device.type == "cpu" else 4)
        for part in device_groups(layers, group):
            keys, values = self._group_round(part, policy, head)
            for index, layer in enumerate(part):
                layer.write(head, keys[index], values[index])

    def _group_round(
        self, part: Sequence[WindowLayer], policy: CachePolicy, head: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        span, kept, window = policy.span(head), policy.kept(head), policy.window
        device, dtype = part[0].keys.device, part[0].keys.dtype
        scaling = self.rotation.scaling

        def cos_sin(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.rotation.cos_sin(torch.arange(start, start + count, device=device))

        low = scale = cos_new = sin_new = None
        if self.kind == "freqkv":
            span_keys = [layer.keys[:, :, head : head + span] for layer in part]
            span_values = [layer.values[:, :, head : head + span] for layer in part]
            cos, sin = cos_sin(head, span)
            sixteen_bit = allows_tf32(part)
            half = sixteen_bit and device.type == "cuda" if self.half is None else self.half
            prepared, scale = self._run(
                unrotated_span, device, span_keys, span_values, cos, sin, scaling, half
            )
            if half:
                low = half_product(lowpass_matrix(span, kept, device, torch.float16), prepared)
            else:
                low = lowpass_matmul(prepared, kept, dim=0, tf32=sixteen_bit)
            cos_new, sin_new = cos_sin(head, kept)
            moved_from, moved_to = head + span, head + kept
        else:
            moved_from, moved_to = head + span - kept, head
        count = window - moved_from
        recent_keys = [layer.keys[:, :, moved_from:window] for layer in part] if count > 0 else []
        recent_values = [layer.values[:, :, moved_from:window] for layer in part] if count > 0 else []
        moves = (*cos_sin(moved_from, count), *cos_sin(moved_to, count)) if count > 0 else None
        recent = (recent_keys, recent_values, moves)
        return self._run(rotated_back, device, low, scale, cos_new, sin_new, *recent, scaling, dtype)

"""Attention of one new token over a window's ``N`` slots, for the static decode step.

With a mask, SDPA leaves only its memory-efficient kernel, which tiles 64 queries where a
decode step has one per head: measured on an H200 (8B shape, 4,096 slots), 171 us a layer,
5.5 of 12.6 ms a token; its math fallback upcasts the keys and values to float32 (13.7 ms).
Here the scores come from one batched product per layer with float32 output, in the grouped
layout (each KV head's queries together, as SDPA's GQA packing does), and the softmax runs in
float32, as the fused kernels do.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

NAME = "freqkv_slots"


def _scores(queries: torch.Tensor, keys_t: torch.Tensor) -> torch.Tensor:
    """``(G, g, D) @ (G, D, N)`` in float32."""
    if queries.is_cuda and queries.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(queries, keys_t, out_dtype=torch.float32)  # 16-bit in, float32 accumulated and out
    return torch.bmm(queries.float(), keys_t.float())


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``query`` ``(B, Hq, 1, D)``; ``key``/``value`` ``(B, Hkv, N, D)``; ``attention_mask``
    ``(1, 1, 1, N)``, True where a slot is visible. Returns ``(B, 1, Hq, D)`` as transformers'
    attention functions do."""
    batch, q_heads, length, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    if length != 1:
        raise ValueError("slot attention serves single-token decode steps")
    group = q_heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    queries = query.reshape(batch * kv_heads, group, dim)
    scores = _scores(queries, key.reshape(batch * kv_heads, slots, dim).transpose(1, 2)) * scale
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask.reshape(1, 1, slots), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.bmm(probs, value.reshape(batch * kv_heads, slots, value.shape[-1]))
    return out.reshape(batch, q_heads, 1, -1).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, slot_attention)

"""Attention of a prefill chunk over the cache, without a mask tensor.

A chunk of ``T`` tokens sees every entry the cache holds and itself causally: query ``i`` sees
keys ``0 .. S - T + i``, the lower-right causal pattern. Given as a ``(T, S)`` mask tensor (what
transformers builds when ``T != S``), SDPA cannot use flash attention; on an H200 its masked
cuDNN kernel took 54 of 353 ms per 8k tokens an 8B model read over a 4,096-entry window, about
24 TFLOP/s. Said as a causal variant (``causal_lower_right``), SDPA runs flash attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

NAME = "freqkv_chunk"


def chunk_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``query`` ``(B, Hq, T, D)``; ``key``/``value`` ``(B, Hkv, S, D)`` with ``S >= T``, the chunk's
    own entries last. ``attention_mask`` is ignored: no padding at batch size 1, and the causal
    part is the variant above. Returns ``(B, T, Hq, D)`` as transformers' attention functions do."""
    length, keys = query.shape[2], key.shape[2]
    if keys < length:
        raise ValueError(f"a chunk of {length} queries over {keys} keys")
    group = query.shape[1] // key.shape[1]
    if group > 1:  # flash wants equal head counts; the copy costs ~2% of a chunk's attention
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    window = kwargs.get("sliding_window")
    if isinstance(window, int) and keys > window:  # Mistral-style: also hide what is too far back
        last = torch.arange(keys - length, keys, device=query.device)[:, None]  # each query's own key
        seen = torch.arange(keys, device=query.device)[None]
        mask = (seen <= last) & (seen > last - window)
    else:
        mask = causal_lower_right(length, keys) if length > 1 else None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, chunk_attention)

"""An independent FreqKV reference in the paper's grouped style, for tests only.

Unlike the engine, this keeps keys BEFORE RoPE, applies RoPE to the whole (compressed)
cache at every attention call with positions 0..len-1, and writes attention by hand.
It shares only the scipy-tested frequency operator with the engine; the model's linear
layers, norms and MLPs are used as plain functions.
"""

from __future__ import annotations

import math

import torch

from freqkv_cli.cache.dct import lowpass


def _rope_tables(config, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (heads, seq, head_dim); cos/sin: (seq, head_dim)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class ReferenceFreqKV:
    """Stream ``ids`` group by group; returns the logits of every position.

    kind "freqkv": compress the middle span of the pre-RoPE cache; "sink": drop the oldest.
    """

    def __init__(self, model, window: int, sink: int, recent: int, ratio: float, kind: str = "freqkv"):
        self.model, self.kind = model, kind
        self.window, self.sink, self.recent, self.ratio = window, sink, recent, ratio
        self.config = model.config
        layers = self.config.num_hidden_layers
        self.keys: list[torch.Tensor | None] = [None] * layers  # (kv_heads, len, head_dim), pre-RoPE
        self.values: list[torch.Tensor | None] = [None] * layers
        self.compressions = 0

    def _attention_layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.model.model.layers[index]
        attn = layer.self_attn
        cfg = self.config
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        seq = hidden.shape[0]
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(x).view(seq, heads, head_dim).transpose(0, 1)
        k = attn.k_proj(x).view(seq, kv_heads, head_dim).transpose(0, 1)
        v = attn.v_proj(x).view(seq, kv_heads, head_dim).transpose(0, 1)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        past = 0 if self.keys[index] is None else self.keys[index].shape[1]
        keys = k if self.keys[index] is None else torch.cat([self.keys[index], k], dim=1)
        values = v if self.values[index] is None else torch.cat([self.values[index], v], dim=1)
        self.keys[index], self.values[index] = keys, values
        total = keys.shape[1]
        cos, sin = _rope_tables(cfg, total)
        q_rot = _apply_rope(q, cos[past:], sin[past:])
        k_rot = _apply_rope(keys, cos, sin)
        group = heads // kv_heads
        k_rot = k_rot.repeat_interleave(group, dim=0)
        v_all = values.repeat_interleave(group, dim=0)
        scores = q_rot @ k_rot.transpose(-1, -2) / math.sqrt(head_dim)
        query_pos = torch.arange(past, total)[:, None]
        key_pos = torch.arange(total)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v_all
        out = out.transpose(0, 1).reshape(seq, heads * head_dim)
        hidden = hidden + attn.o_proj(out)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _compress(self) -> None:
        span = self.window - self.sink - self.recent
        kept = math.floor(span * self.ratio)
        for i in range(len(self.keys)):
            for store in (self.keys, self.values):
                t = store[i]
                head, middle, tail = (
                    t[:, : self.sink],
                    t[:, self.sink : self.sink + span],
                    t[:, self.sink + span :],
                )
                if self.kind == "freqkv":
                    middle = lowpass(middle, kept, dim=1, method="fft")
                else:
                    middle = middle[:, span - kept :]
                store[i] = torch.cat([head, middle, tail], dim=1)
        self.compressions += 1

    @torch.no_grad()
    def run(self, ids: list[int]) -> torch.Tensor:
        span = self.window - self.sink - self.recent
        freed = span - math.floor(span * self.ratio)
        logits = []
        pos = 0
        first = True
        while pos < len(ids):
            size = self.window if first else freed
            if not first:
                self._compress()
            group = ids[pos : pos + size]
            hidden = self.model.model.embed_tokens(torch.tensor(group))
            for index in range(self.config.num_hidden_layers):
                hidden = self._attention_layer(index, hidden)
            logits.append(self.model.lm_head(self.model.model.norm(hidden)))
            pos += size
            first = False
        return torch.cat(logits).float()

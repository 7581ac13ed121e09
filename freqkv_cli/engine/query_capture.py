"""Recording the question's queries while it is read, for query-aware selection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel


class QueryCapture:
    """Records every layer's query states (pre-RoPE, after any per-head norm) while active.

    :attr:`watching` counts the captures active now: a replayed CUDA graph runs no hooks, so
    replays wait while one is.
    """

    watching = 0

    def __init__(self, model: PreTrainedModel) -> None:
        self.layers = model.model.layers
        self.pieces: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self.handles: list = []

    def __enter__(self) -> QueryCapture:
        for index, layer in enumerate(self.layers):
            self.handles.append(layer.self_attn.q_proj.register_forward_hook(self.hook(index)))
        QueryCapture.watching += 1
        return self

    def hook(self, index: int) -> Callable:
        attention = self.layers[index].self_attn
        head_dim = attention.head_dim

        def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            q = output.view(*output.shape[:-1], -1, head_dim)
            if hasattr(attention, "q_norm"):  # Qwen3 normalises each head before RoPE
                q = attention.q_norm(q)
            self.pieces[index].append(q.transpose(1, 2).detach())

        return record

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        QueryCapture.watching -= 1

    def queries(self) -> list[torch.Tensor]:
        return [torch.cat(pieces, dim=-2) for pieces in self.pieces]

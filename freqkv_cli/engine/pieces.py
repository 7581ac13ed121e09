"""Token ids as they come: a flat sequence, a tensor, or an iterable of lists (a book streamed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def as_pieces(token_ids: Iterable[int] | Iterable[Sequence[int]]) -> Iterable[Sequence[int]]:
    """Accept a flat id sequence/tensor or an iterable of id lists."""
    if isinstance(token_ids, torch.Tensor):
        yield token_ids.reshape(-1).tolist()
        return
    flat: list[int] = []
    for item in token_ids:
        if isinstance(item, int):
            flat.append(item)
            if len(flat) >= 4096:
                yield flat
                flat = []
        else:
            if flat:
                yield flat
                flat = []
            yield list(item)
    if flat:
        yield flat

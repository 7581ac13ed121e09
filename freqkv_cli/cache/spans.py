"""Spans of candidate slots: a selected token brings its neighbours along (a fact is a phrase,
not a token)."""

from __future__ import annotations

import torch

# The span reaches further right than left because the tokens a question matches ("pass key
# is", "was called") come before the answer. Measured on the pass-key needle: a centred span of
# 15 cut "The pass key is 35209|80" after the digits, and the model then invented the rest.
SPAN_LEFT, SPAN_RIGHT = 3, 11


def select_spans(score: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, n)`` scores -> ``(B, take)`` sorted indices and the score of each one's span: the
    best token with ``SPAN_LEFT`` neighbours before it and ``SPAN_RIGHT`` after, then the next
    best outside the spans taken, until ``take`` are chosen.

    The greedy walk runs on the host over one copy of the scores: on a GPU each step would wait
    for the device (a few dozen waits a round, which a small model's round is made of)."""
    batch, n = score.shape
    host = score.detach().float().cpu()
    order = torch.sort(host, dim=-1, descending=True, stable=True).indices.tolist()  # ties: first index
    rows: list[list[int]] = []
    values: list[list[float]] = []
    for row in range(batch):
        scores = host[row].tolist()
        chosen = [False] * n
        span_score = [0.0] * n
        count = 0
        for centre in order[row]:
            if count == take or scores[centre] == float("-inf"):
                break
            if chosen[centre]:
                continue
            span = range(max(0, centre - SPAN_LEFT), min(n, centre + SPAN_RIGHT + 1))
            for slot in [i for i in span if not chosen[i]][: take - count]:
                chosen[slot], span_score[slot] = True, scores[centre]
                count += 1
        picked = [i for i in range(n) if chosen[i]]
        rows.append(picked)
        values.append([span_score[i] for i in picked])
    if any(len(picked) != take for picked in rows):
        raise ValueError(f"only {min(map(len, rows))} of {take} candidates have a finite score")
    index = torch.tensor(rows, dtype=torch.long).reshape(batch, take).to(score.device)
    return index, torch.tensor(values, dtype=score.dtype).reshape(batch, take).to(score.device)

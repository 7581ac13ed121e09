"""The passages a hybrid cache keeps exact, as token ids a session can quote back as text.

A kept run often stops just short of the answer ("a copy of the Shikoku Shimb|un"), so each
one is widened by the text read around it. What is remembered is bounded by the window and
the exact slots, whatever the document's length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch

from ..cache.state import State

# A quoted passage is a kept run widened by up to this many tokens read before / after it.
QUOTE_LEFT, QUOTE_RIGHT = 8, 24


class ExactPassages:
    """``recent``: ids of the last ``window`` tokens read (where new exact picks come from);
    ``context``: for each exact entry by stream index, ``(start, ids)`` read around it when it was
    picked (where quotes come from), at most ``1 + QUOTE_LEFT + QUOTE_RIGHT`` ids each."""

    def __init__(self, window: int) -> None:
        self.recent: deque[int] = deque(maxlen=window)
        self.context: dict[int, tuple[int, tuple[int, ...]]] = {}

    def state(self) -> State:
        """The recent ids and each exact entry's context (see :mod:`..cache.state`)."""
        tokens = sorted(self.context)
        starts = [self.context[t][0] for t in tokens]
        lengths = [len(self.context[t][1]) for t in tokens]
        ids = [i for t in tokens for i in self.context[t][1]]
        as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        tensors = {"recent": as_long(list(self.recent)), "context.tokens": as_long(tokens)}
        tensors.update({"context.starts": as_long(starts), "context.lengths": as_long(lengths)})
        tensors["context.ids"] = as_long(ids)
        return State(tensors)

    def load_state(self, state: State) -> None:
        self.recent.clear()
        self.recent.extend(state.tensors["recent"].tolist())
        tokens, starts, lengths, ids = (
            state.tensors[f"context.{name}"].tolist() for name in ("tokens", "starts", "lengths", "ids")
        )
        self.context, at = {}, 0
        for token, start, length in zip(tokens, starts, lengths, strict=True):
            self.context[token] = (start, tuple(ids[at : at + length]))
            at += length

    def read(self, ids: Sequence[int]) -> None:
        self.recent.extend(ids)

    def after_round(self, tokens_seen: int, exact_tokens: torch.Tensor | None) -> None:
        """A round kept ``exact_tokens`` ``(1, e)``: new picks take their context from the recent
        ids (the recent window after a candidate has been read); the others keep theirs."""
        first = tokens_seen - len(self.recent)
        held, recent = self.context, self.recent
        context = {}
        for t in exact_tokens[0].tolist() if exact_tokens is not None else []:
            if t in held:
                context[t] = held[t]
            else:
                start = max(first, t - QUOTE_LEFT)
                end = min(tokens_seen, t + QUOTE_RIGHT + 1)
                context[t] = (start, tuple(recent[i - first] for i in range(start, end)))
        self.context = context

    def best(
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        limit: int,
        left: int = QUOTE_LEFT,
        right: int = QUOTE_RIGHT,
    ) -> list[list[int]]:
        """Token ids of the ``limit`` best runs of consecutive exact entries (``tokens``, ``scores``
        ``(1, e)``), in stream order, each widened by up to ``left`` / ``right`` of the tokens read
        around it, overlapping ones merged."""
        left, right = min(left, QUOTE_LEFT), min(right, QUOTE_RIGHT)
        runs: list[tuple[float, list[int]]] = []
        for token, score in zip(tokens[0].tolist(), scores[0].tolist(), strict=True):
            if runs and token == runs[-1][1][-1] + 1:
                runs[-1][1].append(token)
                runs[-1] = (max(runs[-1][0], score), runs[-1][1])
            else:
                runs.append((score, [token]))
        best = sorted(
            (run for _, run in sorted(runs, key=lambda run: -run[0])[:limit]), key=lambda run: run[0]
        )
        known: dict[int, int] = {}  # stream index -> id, from the contexts of the chosen runs
        for run in best:
            for t in run:
                start, ids = self.context[t]
                known.update((start + k, token) for k, token in enumerate(ids))
        passages: list[list[int]] = []
        last_end = None
        for run in best:
            begin, end = run[0], run[-1] + 1
            while begin - 1 in known and run[0] - begin < left:
                begin -= 1
            while end in known and end - run[-1] <= right:
                end += 1
            if last_end is not None and begin <= last_end:  # overlaps the previous one: merge
                passages[-1].extend(known[i] for i in range(last_end, end))
                last_end = max(last_end, end)
                continue
            passages.append([known[i] for i in range(begin, end)])
            last_end = end
        return passages

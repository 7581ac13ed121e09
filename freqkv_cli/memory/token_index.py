"""BM25 over windows of a document's token ids, with the token ids themselves as terms.

No decoding and no word splitting: one vectorized pass per distinct question token, so a
million-token memory is ranked in tens of milliseconds (decoding and splitting it into words
takes seconds, :class:`.passages.PassageIndex`). Frequent tokens (" the", " is", punctuation)
weigh little through their inverse document frequency, as stop words do there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .passages import Passage, pick


@dataclass
class TokenIndex:
    """Windows ``doc_ids[k*stride : k*stride + passage_tokens]`` (the last may be shorter), as
    :class:`.passages.PassageIndex` cuts them; ``k1`` as in BM25 (every window has the same
    length, so ``b`` does not enter)."""

    doc_ids: np.ndarray
    passage_tokens: int = 64
    stride: int = 32
    k1: float = 1.5
    starts: np.ndarray = field(init=False, repr=False)
    ends: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.passage_tokens < 1 or not 1 <= self.stride <= self.passage_tokens:
            raise UsageError(
                f"windows of {self.passage_tokens} tokens every {self.stride} do not cover a text"
            )
        self.doc_ids = np.asarray(self.doc_ids, dtype=np.int64).reshape(-1)
        n = len(self.doc_ids)
        count = 1 if n <= self.passage_tokens else math.ceil((n - self.passage_tokens) / self.stride) + 1
        self.starts = np.arange(count, dtype=np.int64) * self.stride
        self.ends = np.minimum(self.starts + self.passage_tokens, n)

    def scores(self, question_ids: Sequence[int]) -> np.ndarray:
        """``(windows,)`` BM25 score of every window for the question's distinct token ids."""
        windows = len(self.starts)
        total = np.zeros(windows, dtype=np.float64)
        if not len(self.doc_ids):
            return total
        reach = -(-self.passage_tokens // self.stride)  # windows a token can be in
        for term in dict.fromkeys(int(t) for t in question_ids):
            at = np.flatnonzero(self.doc_ids == term)
            if not len(at):
                continue
            hits = []
            for back in range(reach):  # window at // stride - back holds `at` if it reaches it
                window = at // self.stride - back
                inside = (
                    (window >= 0) & (window < windows) & (at < window * self.stride + self.passage_tokens)
                )
                hits.append(window[inside])
            tf = np.bincount(np.concatenate(hits), minlength=windows).astype(np.float64)
            df = np.count_nonzero(tf)
            idf = math.log(1 + (windows - df + 0.5) / (df + 0.5))
            total += idf * tf * (self.k1 + 1) / (tf + self.k1)
        return total

    def rank(self, question_ids: Sequence[int], *, top: int = 8, margin: int = 0) -> list[Passage]:
        """The ``top`` best windows, best first, none overlapping a better one (see :func:`.pick`)."""
        return pick(
            self.starts, self.ends, len(self.doc_ids), self.scores(question_ids), top=top, margin=margin
        )

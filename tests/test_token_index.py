"""BM25 over token-id windows, against a plain per-window count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from freqkv_cli.memory.token_index import TokenIndex


def reference_scores(ids: list[int], question: list[int], size: int, stride: int, k1: float) -> list[float]:
    starts = [0] if len(ids) <= size else list(range(0, len(ids) - size + stride, stride))
    starts = [s for s in starts if s == 0 or s - stride + size < len(ids)]
    windows = [ids[s : s + size] for s in starts]
    scores = []
    for window in windows:
        total = 0.0
        for term in dict.fromkeys(question):
            df = sum(term in w for w in windows)
            if not df:
                continue
            tf = window.count(term)
            idf = math.log(1 + (len(windows) - df + 0.5) / (df + 0.5))
            total += idf * tf * (k1 + 1) / (tf + k1)
        scores.append(total)
    return scores


@pytest.mark.parametrize(("size", "stride"), [(64, 32), (16, 16), (10, 3), (7, 7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_a_plain_count_per_window(size: int, stride: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 40, 500).tolist()
    question = rng.integers(0, 60, 9).tolist()  # some terms the document lacks
    index = TokenIndex(np.array(ids), passage_tokens=size, stride=stride)
    want = reference_scores(ids, question, size, stride, index.k1)
    assert len(index.starts) == len(want)
    np.testing.assert_allclose(index.scores(question), want, rtol=1e-12, atol=1e-12)


def test_a_planted_run_of_rare_tokens_ranks_first() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 30, 20000)
    planted = [91, 92, 93, 94]
    ids[12345 : 12345 + 4] = planted
    found = TokenIndex(ids).rank([5, 91, 93, 7, 94], top=3)
    assert found[0].start <= 12345 and found[0].end >= 12349
    assert all(a.score >= b.score for a, b in itertools.pairwise(found))
    assert TokenIndex(np.array([], dtype=np.int64)).rank([1, 2]) == []

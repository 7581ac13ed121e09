"""Passages recalled for a question asked after the reading, to quote just before it.

While a document is read no question exists, so the cache is query-agnostic. When the question
comes, passages are chosen from what the session kept:

- ``tokens``: BM25 over windows of the document's token ids, the ids as terms
  (:mod:`.token_index`: milliseconds for a million tokens);
- ``words``: BM25 over the same windows decoded to words, English stop words left out
  (:mod:`.passages`: about a second per million tokens);
- ``held``: the exact entries a hybrid cache holds, scored by the question's own queries against
  their keys (the question is read once to get its queries, then taken back);
- ``both``: ``tokens`` and ``held`` interleaved, ``tokens`` first, repeats dropped;
- ``none``: nothing quoted.

Measured against each other in docs/BENCHMARKS.md section 7; the best is :data:`DEFAULT_RECALL`.
"""

from __future__ import annotations

import numpy as np

from ..cache.selectors import AttentionSelector, Candidates
from ..session.session import Session
from .passages import rank_passages
from .token_index import TokenIndex

RECALL_METHODS = ("both", "tokens", "words", "held", "none")
DEFAULT_RECALL = "both"
PASSAGE_TOKENS = 64  # a passage: about two sentences
# A token-ranked passage is quoted only if it scores at least this share of the best one: the
# question's frequent tokens (" the", "?") match everywhere, and passages that match only them
# distract a small model (the pass key, read first, asked later: 13/25 right with 8 quotes).
RELEVANT_SHARE = 0.5
# Tokens a passage is widened by on each side: the answer often follows the words a question
# matches, past the window's end ("The pass key is 8|7883", digits being tokens of their own).
MARGIN = 16


def recall(session: Session, question: str, count: int, method: str = DEFAULT_RECALL) -> list[list[int]]:
    """Token ids of up to ``count`` passages for ``question``, in document order (``both``:
    the lexical ones first)."""
    if method not in RECALL_METHODS:
        raise ValueError(f"recall method {method!r} is not one of {', '.join(RECALL_METHODS)}")
    if count <= 0 or method == "none":
        return []
    if method == "tokens":
        return by_tokens(session, question, count)
    if method == "words":
        return by_words(session, question, count)
    if method == "held":
        return held(session, question, count)
    # Half the quotes from each (the lexical ones the best by score), the rest from tokens.
    kept = held(session, question, count // 2)
    lexical = by_tokens(session, question, count, best_first=True)
    lexical = lexical[: count - len(kept)]
    chosen = sorted(lexical, key=lambda passage: passage[0])
    return [ids for _, ids in chosen] + [ids for ids in kept if not any(_within(ids, i) for _, i in chosen)]


def by_tokens(session: Session, question: str, count: int, best_first: bool = False) -> list:
    """Token ids of the passages, in document order; ``best_first``: ``(start, ids)`` pairs, the
    best first."""
    ids = np.frombuffer(session.document_ids, dtype=np.int32)
    index = TokenIndex(ids, passage_tokens=PASSAGE_TOKENS, stride=PASSAGE_TOKENS // 2)
    found = index.rank(session.encode(" " + question), top=count, margin=MARGIN)
    found = [p for p in found if p.score >= RELEVANT_SHARE * found[0].score]
    if best_first:
        return [(p.start, ids[p.start : p.end].tolist()) for p in found]
    return [ids[p.start : p.end].tolist() for p in sorted(found, key=lambda p: p.start)]


def by_words(session: Session, question: str, count: int) -> list[list[int]]:
    ids = session.document_ids
    if not ids:
        return []
    decode = session.tokenizer.decode  # type: ignore[attr-defined]
    found = rank_passages(
        list(ids), question, decode, passage_tokens=PASSAGE_TOKENS, top=count, margin=MARGIN
    )
    return [list(ids[p.start : p.end]) for p in sorted(found, key=lambda p: p.start)]


def held(session: Session, question: str, count: int) -> list[list[int]]:
    """The best runs of exact entries under the question's attention (hybrid caches only)."""
    engine = session.engine
    if not isinstance(engine.selector, AttentionSelector) or engine.cache.exact_tokens is None:
        return []
    queries = engine.question_queries(session.encode(" " + question))
    selector, tokens = engine.selector, engine.cache.exact_tokens  # restored after the question
    assert isinstance(selector, AttentionSelector) and tokens is not None and engine.passages is not None
    selector.ask(queries, engine.head_weights)
    head, cache = engine.cache.head, engine.cache
    keys = [cache.entries(i)[0] for i in range(len(cache.layers))]
    scores = selector.score(Candidates(head, tokens.shape[-1], keys[0].device, keys))
    return engine.passages.best(tokens, scores, count)


def _within(ids: list[int], other: list[int]) -> bool:
    """Whether ``ids`` is a run of ``other`` (the same passage, or a part of it)."""
    n = len(ids)
    return any(other[i : i + n] == ids for i in range(len(other) - n + 1))

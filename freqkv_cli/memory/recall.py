"""Passages recalled for a question asked after the reading, to quote just before it.

While a document is read no question exists, so the cache is query-agnostic. When the question
comes, passages are chosen from what the session kept:

- ``tokens``: BM25 over windows of the document's token ids, the ids as terms
  (:mod:`.token_index`: milliseconds for a million tokens);
- ``words``: BM25 over the same windows decoded to words, English stop words left out
  (:mod:`.passages`: about a second per million tokens);
- ``held``: the exact entries a hybrid cache holds, scored by the question's own queries against
  their keys (the question is read once to get its queries, then taken back);
- ``both``: half the quotes ``held``, the rest the best by ``tokens``, repeats dropped;
- ``none``: nothing quoted.

Measured against each other in docs/BENCHMARKS.md section 7; the best is :data:`DEFAULT_RECALL`.
"""

from __future__ import annotations

import numpy as np

from ..cache.selectors import AttentionSelector, Candidates
from ..session.prompts import SUMMARIZE_TURN
from ..session.session import Session
from .passages import Passage, rank_passages
from .recall_methods import DEFAULT_RECALL, RECALL_METHODS
from .token_index import TokenIndex

PASSAGE_TOKENS = 64  # a passage: about two sentences
# A token-ranked passage is quoted only if it scores at least this share of the best one: the
# question's frequent tokens (" the", "?") match everywhere, and passages that match only them
# distract a small model (the pass key, read first, asked later: 13/25 right with 8 quotes).
RELEVANT_SHARE = 0.5
# Tokens a passage is widened by on each side: the answer often follows the words a question
# matches, past the window's end ("The pass key is 8|7883", digits being tokens of their own).
MARGIN = 16


def recall(session: Session, question: str, count: int, method: str = DEFAULT_RECALL) -> list[list[int]]:
    """Token ids of up to ``count`` passages for ``question``, in document order (``both``: the
    lexical ones, then the held ones)."""
    if method not in RECALL_METHODS:
        raise ValueError(f"recall method {method!r} is not one of {', '.join(RECALL_METHODS)}")
    if count <= 0 or method == "none":
        return []
    if method == "held":
        return held(session, question, count)
    if method == "words":
        return _in_order(session, by_words(session, question, count))
    if method == "tokens":
        return _in_order(session, by_tokens(session, question, count))
    # Half the quotes held (when there are that many), the rest the best by tokens.
    kept = held(session, question, count // 2)
    lexical = _in_order(session, by_tokens(session, question, count)[: count - len(kept)])
    return lexical + [ids for ids in kept if not any(_within(ids, other) for other in lexical)]


def by_tokens(session: Session, question: str, count: int) -> list[Passage]:
    """The best passages by BM25 over token ids, best first, only those scoring at least
    ``RELEVANT_SHARE`` of the best."""
    ids = np.frombuffer(session.document_ids, dtype=np.int32)
    index = TokenIndex(ids, passage_tokens=PASSAGE_TOKENS, stride=PASSAGE_TOKENS // 2)
    found = index.rank(session.encode(" " + question), top=count, margin=MARGIN)
    return [p for p in found if p.score >= RELEVANT_SHARE * found[0].score] if found else []


def by_words(session: Session, question: str, count: int) -> list[Passage]:
    """The best passages by BM25 over words (bm25s), best first."""
    ids = session.document_ids
    if not ids:
        return []
    decode = session.tokenizer.decode  # type: ignore[attr-defined]
    return rank_passages(list(ids), question, decode, passage_tokens=PASSAGE_TOKENS, top=count, margin=MARGIN)


def _in_order(session: Session, passages: list[Passage]) -> list[list[int]]:
    """The token ids of ``passages``, in document order."""
    ids = session.document_ids
    return [ids[p.start : p.end].tolist() for p in sorted(passages, key=lambda p: p.start)]


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


def answer_from_memory(
    session: Session, task: str, question: str | None, reread: int, method: str = DEFAULT_RECALL
) -> None:
    """Get a session loaded from a memory ready to answer ``task`` (``summarize`` or ``qa``): the
    document turn a reading left open is closed with the task's words, for qa with ``reread``
    passages recalled for the question (by ``method``) quoted before it; a conversation saved
    between turns takes the question (or the summary request) as a new turn."""
    if session.open_task is None:
        session.add_user_turn(question if question is not None else SUMMARIZE_TURN)
        return
    passages = recall(session, question, reread, method) if question is not None else None
    session.finish_document(task, question, passages=passages)

"""Passages recalled for a question asked after the reading, to quote just before it.

While a document is read no question exists, so the cache is query-agnostic. When the question
comes, passages are chosen from what the session kept:

- ``lexical``: BM25 over windows of the document's token ids (:mod:`.passages`);
- ``held``: the exact entries a hybrid cache holds, scored by the question's own queries against
  their keys (the question is read once to get its queries, then taken back);
- ``both``: the two interleaved, lexical first, overlaps dropped;
- ``none``: nothing quoted.

Measured against each other in docs/BENCHMARKS.md section 7; the best is :data:`DEFAULT_RECALL`.
"""

from __future__ import annotations

from ..cache.selectors import AttentionSelector, Candidates
from ..session.session import Session
from .passages import rank_passages

RECALL_METHODS = ("lexical", "held", "both", "none")
DEFAULT_RECALL = "lexical"
PASSAGE_TOKENS = 64  # a lexical passage: about two sentences


def recall(session: Session, question: str, count: int, method: str = DEFAULT_RECALL) -> list[list[int]]:
    """Token ids of up to ``count`` passages for ``question``, in document order."""
    if method not in RECALL_METHODS:
        raise ValueError(f"recall method {method!r} is not one of {', '.join(RECALL_METHODS)}")
    if count <= 0 or method == "none":
        return []
    if method == "lexical":
        return lexical(session, question, count)
    if method == "held":
        return held(session, question, count)
    merged: list[tuple[int, list[int]]] = []
    for first, second in zip(lexical(session, question, count), held(session, question, count), strict=False):
        merged.extend([(0, first), (1, second)])
    chosen: list[list[int]] = []
    for _, ids in merged:
        text = session.tokenizer.decode(ids)  # type: ignore[attr-defined]
        if not any(text in session.tokenizer.decode(other) for other in chosen):  # type: ignore[attr-defined]
            chosen.append(ids)
    return chosen[:count]


def lexical(session: Session, question: str, count: int) -> list[list[int]]:
    ids = session.document_ids
    if not ids:
        return []
    decode = session.tokenizer.decode  # type: ignore[attr-defined]
    found = rank_passages(list(ids), question, decode, passage_tokens=PASSAGE_TOKENS, top=count)
    return [list(ids[p.start : p.end]) for p in sorted(found, key=lambda p: p.start)]


def held(session: Session, question: str, count: int) -> list[list[int]]:
    """The best runs of exact entries under the question's attention (hybrid caches only)."""
    engine = session.engine
    selector, tokens = engine.selector, engine.cache.exact_tokens
    if not isinstance(selector, AttentionSelector) or tokens is None or engine.passages is None:
        return []
    selector.ask(engine.question_queries(session.encode(" " + question)), engine.head_weights)
    tokens = engine.cache.exact_tokens  # the same entries, restored after the question was read
    head, cache = engine.cache.head, engine.cache
    keys = [cache.entries(i)[0] for i in range(len(cache.layers))]
    scores = selector.score(Candidates(head, tokens.shape[-1], keys[0].device, keys))
    return engine.passages.best(tokens, scores, count)

"""Question-time passage ranking over a memory's document token ids (lexical, BM25 via `bm25s`).

While reading, no question exists, so the cache is query-agnostic; the memory keeps the document's
token ids. When a question comes, the document is cut into overlapping windows of token ids, the
windows are decoded to text and ranked against the question with BM25 (Lucene variant, English
stop words, no stemming: the same ranking wherever freqkv runs), and the best few, not overlapping
one another, are returned as token offsets to feed exact before the question.

Build a `PassageIndex` once per memory (about a second per million tokens on one CPU core) and ask
it many questions (milliseconds each); `rank_passages` does both for a single question.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:  # bm25s (and the scipy it imports) loads on first use: ~0.2 s off every command
    import bm25s

STOPWORDS = "en_plus"  # bm25s's 179-word English list (NLTK's); its "en" keeps what/who/did
_WORD = re.compile(r"\w")
_WORD_TAIL = re.compile(r"\w*")
_WORDS = re.compile(r"\w+")
_PROBES = 32  # unit boundaries checked before decoding units instead of whole windows


@dataclass(frozen=True)
class Passage:
    """Tokens ``doc_ids[start:end]`` of the document, with their BM25 score for the question."""

    start: int
    end: int
    score: float


def _terms(texts: Sequence[str]) -> bm25s.tokenization.Tokenized:
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False, return_ids=True)


def _words(text: str) -> list[str]:
    import bm25s

    return bm25s.tokenize([text], stopwords=STOPWORDS, show_progress=False, return_ids=False)[0]


class PassageIndex:
    """A BM25 index over overlapping windows of a document's token ids.

    Window k covers ``doc_ids[k*stride : k*stride + passage_tokens]`` (the last one may be shorter);
    together they cover every token. `decode` turns token ids into text (a tokenizer's decode).

    When `stride` divides `passage_tokens` and joining decoded pieces gives the same words as
    decoding them together (byte-level BPE tokenizers; checked on a few boundaries of this
    document), each stride-long unit is decoded once and windows are joined from units, a word cut
    at a unit boundary counted whole in the unit where it starts. Otherwise (SentencePiece
    tokenizers strip the first space of a decode) every window is decoded on its own: twice the
    work, the same words.
    """

    def __init__(
        self,
        doc_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        *,
        passage_tokens: int = 64,
        stride: int = 32,
    ) -> None:
        if passage_tokens < 1:
            raise UsageError(f"passage length must be at least 1 token, not {passage_tokens}")
        if not 1 <= stride <= passage_tokens:
            raise UsageError(f"passage stride must be in [1, {passage_tokens}] tokens, not {stride}")
        ids = doc_ids.tolist() if hasattr(doc_ids, "tolist") else list(doc_ids)  # numpy, torch
        self.tokens = len(ids)
        self.passage_tokens = passage_tokens
        self.stride = stride
        # Window k starts at k*stride; it is kept while the one before it stops short of the end.
        count = 1 if len(ids) <= passage_tokens else math.ceil((len(ids) - passage_tokens) / stride) + 1
        self.starts = np.arange(count, dtype=np.int64) * stride
        self.ends = np.minimum(self.starts + passage_tokens, len(ids))
        self._retriever: bm25s.BM25 | None = None
        if not ids:
            return
        texts = self._window_texts(ids, decode)
        corpus = _terms(texts)
        if not corpus.vocab:
            return  # no word in the whole document (all stop words, digits alone, symbols)
        import bm25s

        retriever = bm25s.BM25()
        retriever.index((corpus.ids, corpus.vocab), show_progress=False)
        self._retriever = retriever

    def _window_texts(self, ids: list[int], decode: Callable[[list[int]], str]) -> list[str]:
        per = self.passage_tokens // self.stride
        if self.passage_tokens % self.stride == 0 and len(self.starts) > 1:
            unit_texts = [decode(ids[i : i + self.stride]) for i in range(0, len(ids), self.stride)]
            if _joins_cleanly(ids, unit_texts, self.stride, decode):
                units = _split_at_word_ends(unit_texts)
                return ["".join(units[k : k + per]) for k in range(len(self.starts))]
        return [decode(ids[s:e]) for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True)]

    def scores(self, question: str) -> np.ndarray:
        """BM25 score of every window for `question`: (windows,) float32, 0 where no term matches."""
        if self._retriever is None:
            return np.zeros(len(self.starts) if self.tokens else 0, dtype=np.float32)
        words = _words(question)
        vocab = self._retriever.vocab_dict
        known = [word for word in dict.fromkeys(words) if word and word in vocab]
        if not known:
            return np.zeros(len(self.starts), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(known), dtype=np.float32)

    def rank(self, question: str, *, top: int = 8, margin: int = 0) -> list[Passage]:
        """The `top` best windows for `question`, best first (ties: earlier first), none overlapping
        another (a window overlapping a better one is dropped), only those matching some term.

        `margin` > 0 widens each chosen window by that many tokens on both sides (within the
        document), so that a sentence cut by a window's edge (an answer after the words of the
        question, say) comes whole; widened passages that then overlap or touch are merged into one
        (the better score), so fewer than `top` may come back.
        """
        return pick(self.starts, self.ends, self.tokens, self.scores(question), top=top, margin=margin)


def pick(
    starts: np.ndarray, ends: np.ndarray, tokens: int, scores: np.ndarray, *, top: int, margin: int
) -> list[Passage]:
    """The `top` best of the windows ``starts``/``ends`` (token offsets into a document of
    ``tokens`` tokens) by ``scores``, chosen as `PassageIndex.rank` says."""
    if top < 1:
        raise UsageError(f"the number of passages must be at least 1, not {top}")
    if margin < 0:
        raise UsageError(f"the passage margin must be at least 0 tokens, not {margin}")
    order = np.lexsort((starts[: len(scores)], -scores))
    chosen: list[Passage] = []
    for k in order.tolist():
        score = float(scores[k])
        if score <= 0.0 or len(chosen) == top:
            break
        start, end = int(starts[k]), int(ends[k])
        if all(end <= other.start or start >= other.end for other in chosen):
            chosen.append(Passage(start, end, score))
    if margin == 0:
        return chosen
    merged: list[Passage] = []
    for passage in sorted(chosen, key=lambda p: p.start):
        start, end = max(0, passage.start - margin), min(tokens, passage.end + margin)
        if merged and start <= merged[-1].end:
            last = merged.pop()
            start, end, score = last.start, max(end, last.end), max(last.score, passage.score)
        else:
            score = passage.score
        merged.append(Passage(start, end, score))
    return sorted(merged, key=lambda p: (-p.score, p.start))


def _joins_cleanly(
    ids: list[int], unit_texts: list[str], unit: int, decode: Callable[[list[int]], str]
) -> bool:
    """Whether decoding two units apart and joining gives the words of decoding them together,
    on up to `_PROBES` boundaries spread over the document."""
    boundaries = len(unit_texts) - 1
    for j in sorted({1 + (i * boundaries) // _PROBES for i in range(min(_PROBES, boundaries))}):
        together = decode(ids[(j - 1) * unit : (j + 1) * unit])
        if _WORDS.findall(together) != _WORDS.findall(unit_texts[j - 1] + unit_texts[j]):
            return False
    return True


def _split_at_word_ends(unit_texts: list[str]) -> list[str]:
    """The same text cut at the same places, except that a cut inside a word moves to its end."""
    text = "".join(unit_texts)
    cuts = [0]
    position = 0
    for piece in unit_texts[:-1]:
        position += len(piece)
        cut = position
        if 0 < cut < len(text) and _WORD.match(text, cut - 1) and _WORD.match(text, cut):
            cut = _WORD_TAIL.match(text, cut).end()
        cuts.append(max(cut, cuts[-1]))
    cuts.append(len(text))
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def rank_passages(
    doc_ids: Sequence[int],
    question: str,
    decode: Callable[[list[int]], str],
    *,
    passage_tokens: int = 64,
    stride: int = 32,
    top: int = 8,
    margin: int = 0,
) -> list[Passage]:
    """The passages of `doc_ids` that best match `question`, best first, not overlapping.

    Each passage is a window of `passage_tokens` token ids (starting every `stride` tokens) decoded
    with `decode` and ranked by BM25 against the question; at most `top` are returned, only those
    sharing a word (not a stop word) with the question; `margin` widens them (see
    `PassageIndex.rank`). Builds a `PassageIndex` each call: keep
    one per memory to ask several questions.
    """
    index = PassageIndex(doc_ids, decode, passage_tokens=passage_tokens, stride=stride)
    return index.rank(question, top=top, margin=margin)

"""Question-time passage ranking: BM25 over windows of a memory's token ids."""

from __future__ import annotations

import itertools
import math
import random
import re

import numpy as np
import pytest
from bm25s.stopwords import STOPWORDS_EN_PLUS
from tinymodel import byte_tokenizer

from freqkv_cli.errors import UsageError
from freqkv_cli.memory import passages as passages_module
from freqkv_cli.memory.passages import Passage, PassageIndex, rank_passages

PLANTED = "The secret code of the vault is 4417."
QUESTION = "What is the secret code of the vault?"

_SUBJECTS = [
    "The old farmer",
    "A tired teacher",
    "The young student",
    "My neighbour",
    "The principal",
    "Red Shirt",
]
_VERBS = ["walked to", "looked at", "talked about", "wrote a letter about", "forgot", "painted"]
_OBJECTS = [
    "the river",
    "the school",
    "the market",
    "a small house",
    "the bridge",
    "the hot spring",
    "the pond",
]
_DISTRACTORS = [  # each shares one or two of the question's words, never all three
    "The code of conduct was read aloud in the hall.",
    "The vault door of the bank was painted green.",
    "Nobody in the village kept a secret for long.",
    "The secret of the garden was the rain.",
    "A new code for the gate was chosen in 1987.",
    "The old vault under the temple held only dust.",
]


def _sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % 17 == 5:
            out.append(rng.choice(_DISTRACTORS))
        else:
            out.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} on day {i}.")
    return out


class Pieces:
    """A toy tokenizer over text pieces: each word with its leading space, optionally cut into pieces
    of `cut` characters (the rest without a space, like BPE). `strip_first` drops the first space of
    every decode, as SentencePiece decoders do."""

    def __init__(self, *, cut: int | None = None, strip_first: bool = False) -> None:
        self.cut = cut
        self.strip_first = strip_first
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in re.findall(r"\s*\S+", text):
            parts = (
                [word]
                if self.cut is None
                else [word[i : i + self.cut] for i in range(0, len(word), self.cut)]
            )
            for part in parts:
                if part not in self.vocab:
                    self.vocab[part] = len(self.pieces)
                    self.pieces.append(part)
                ids.append(self.vocab[part])
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.pieces[i] for i in ids)
        return text[1:] if self.strip_first and text.startswith(" ") else text


def _document(
    tokenizer: Pieces, count: int = 3000, at: int = 1900, seed: int = 0
) -> tuple[list[int], int, int]:
    """Token ids of `count` sentences with the planted one at sentence `at`; its token span."""
    sentences = _sentences(count, seed)
    before = tokenizer.encode(" " + " ".join(sentences[:at]))
    planted = tokenizer.encode(" " + PLANTED)
    after = tokenizer.encode(" " + " ".join(sentences[at:]))
    return before + planted + after, len(before), len(before) + len(planted)


def _contains(passage: Passage, start: int, end: int) -> bool:
    return passage.start <= start and end <= passage.end


def _check_shape(found: list[Passage], top: int) -> None:
    assert len(found) <= top
    assert all(p.score > 0 for p in found)
    assert all(a.score >= b.score for a, b in itertools.pairwise(found))
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            assert a.end <= b.start or b.end <= a.start, (a, b)


@pytest.mark.parametrize(
    "tokenizer",
    [Pieces(), Pieces(cut=3), Pieces(strip_first=True), Pieces(cut=2, strip_first=True)],
    ids=["words", "subwords", "sentencepiece-like", "subwords-sentencepiece-like"],
)
def test_finds_the_planted_sentence(tokenizer: Pieces) -> None:
    ids, start, end = _document(tokenizer)
    assert len(ids) > 25_000
    passage_tokens = 64 if tokenizer.cut is None else 128
    found = rank_passages(ids, QUESTION, tokenizer.decode, passage_tokens=passage_tokens)
    _check_shape(found, 8)
    assert len(found) == 8
    assert _contains(found[0], start, end), (found[0], start, end)
    assert PLANTED in tokenizer.decode(ids[found[0].start : found[0].end])
    assert found[0].score > 1.5 * found[1].score  # all three words beat one or two
    again = rank_passages(ids, QUESTION, tokenizer.decode, passage_tokens=passage_tokens)
    assert again == found  # deterministic
    assert rank_passages(np.array(ids), QUESTION, tokenizer.decode, passage_tokens=passage_tokens) == found


def test_finds_it_across_every_unit_boundary_with_a_byte_tokenizer() -> None:
    """Bytes as tokens: every word is cut somewhere; the planted sentence is moved over every offset of
    a stride so it meets each cut, and the number (4 digit tokens) must stay one word."""
    tokenizer = byte_tokenizer()
    sentences = _sentences(400, seed=1)
    base = " ".join([*sentences[:250], PLANTED, *sentences[250:]])

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids)

    cut_at_the_edge = 0
    for shift in range(32):
        text = "~" * shift + base
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(text[: text.index(PLANTED)], add_special_tokens=False)["input_ids"])
        end = start + len(PLANTED)
        index = PassageIndex(ids, decode, passage_tokens=128, stride=32)
        for question in (QUESTION, "Which vault has the code 4417?"):
            found = index.rank(question, top=4)
            _check_shape(found, 4)
            assert "secret code of the vault" in decode(ids[found[0].start : found[0].end]), (shift, found[0])
            cut_at_the_edge += not _contains(found[0], start, end)
            widened = index.rank(question, top=4, margin=16)
            assert _contains(widened[0], start, end), (shift, question, widened[0], start)
            assert widened[0].score == found[0].score
            _check_shape(widened, 4)
        assert index.scores("Is 4417 the number?")[start // 32] > 0  # the window that holds it whole
    assert cut_at_the_edge < 16  # (why `margin` exists: a window may end inside the answer)


def test_margin_widens_and_merges() -> None:
    tokenizer = Pieces()
    ids, _start, _end = _document(tokenizer, count=900, at=400, seed=2)
    index = PassageIndex(ids, tokenizer.decode)
    for question in (QUESTION, "the old farmer walked to the hot spring", "red shirt"):
        plain = index.rank(question, top=8)
        for margin in (1, 16, 40):
            widened = index.rank(question, top=8, margin=margin)
            _check_shape(widened, 8)
            # Every chosen window lies inside exactly one widened passage, which holds its margin too.
            for p in plain:
                holders = [w for w in widened if w.start <= p.start and p.end <= w.end]
                assert len(holders) == 1
                assert holders[0].start <= max(0, p.start - margin)
                assert holders[0].end >= min(len(ids), p.end + margin)
            # And each widened passage is made only of chosen windows and their margins.
            assert sum(w.end - w.start for w in widened) <= sum(p.end - p.start + 2 * margin for p in plain)
            assert {w.score for w in widened} <= {p.score for p in plain}
            assert widened[0].score == plain[0].score


def _reference_scores(texts: list[str], question: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """BM25 (Lucene's: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl)))
    written out here, over words of two or more word characters, lower case, less the stop words."""
    stop = set(STOPWORDS_EN_PLUS)

    def words(text: str) -> list[str]:
        return [w for w in re.findall(r"\b\w\w+\b", text.lower()) if w not in stop]

    docs = [words(t) for t in texts]
    average = sum(map(len, docs)) / len(docs)
    scores = np.zeros(len(docs))
    for term in dict.fromkeys(words(question)):
        df = sum(term in d for d in docs)
        if df == 0:
            continue
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, doc in enumerate(docs):
            tf = doc.count(term)
            scores[i] += idf * tf / (tf + k1 * (1 - b + b * len(doc) / average))
    return scores


@pytest.mark.parametrize("strip_first", [False, True])
@pytest.mark.parametrize(("passage_tokens", "stride"), [(64, 32), (50, 20), (40, 40)])
def test_scores_match_a_written_out_bm25(strip_first: bool, passage_tokens: int, stride: int) -> None:
    tokenizer = Pieces(strip_first=strip_first)
    ids, _start, _end = _document(tokenizer, count=900, at=400, seed=3)
    index = PassageIndex(ids, tokenizer.decode, passage_tokens=passage_tokens, stride=stride)
    texts = [
        tokenizer.decode(ids[s:e]) for s, e in zip(index.starts.tolist(), index.ends.tolist(), strict=True)
    ]
    for question in (QUESTION, "Where did the old farmer walk on day 77?", "red shirt painted the pond"):
        expected = _reference_scores(texts, question)
        got = index.scores(question)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
        found = index.rank(question, top=5)
        _check_shape(found, 5)
        assert found[0].start == int(index.starts[np.argmax(expected)])  # no ties at the top here


@pytest.mark.parametrize("cut", [None, 3])
def test_unit_and_window_decoding_agree(monkeypatch: pytest.MonkeyPatch, cut: int | None) -> None:
    """Whole-word tokens: the same scores either way. Sub-word tokens: a word cut by a window's end is
    counted whole by the unit path (its tail comes from the next unit), by the window path not at all;
    only such windows may differ."""
    tokenizer = Pieces(cut=cut)
    ids, _start, _end = _document(tokenizer, count=600, at=300, seed=4)
    fast = PassageIndex(ids, tokenizer.decode)
    monkeypatch.setattr(passages_module, "_joins_cleanly", lambda *args: False)
    exact = PassageIndex(ids, tokenizer.decode)
    for question in (QUESTION, "the young student wrote about the bridge"):
        a, b = fast.scores(question), exact.scores(question)
        if cut is None:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            assert fast.rank(question) == exact.rank(question)
        else:
            assert np.mean(~np.isclose(a, b, rtol=0.05, atol=0.05)) < 0.05
    assert fast.rank(QUESTION, top=1)[0].start == exact.rank(QUESTION, top=1)[0].start


def test_cuts_move_to_word_ends() -> None:
    rng = random.Random(5)
    alphabet = "ab1_ .,\n-é"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 120)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randrange(1, 12))))
        units = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        fixed = passages_module._split_at_word_ends(units)
        assert "".join(fixed) == text and len(fixed) == len(units)
        position = 0
        for piece in fixed[:-1]:
            position += len(piece)
            if 0 < position < len(text):
                assert not (re.match(r"\w", text[position - 1]) and re.match(r"\w", text[position])), (
                    units,
                    fixed,
                )


@pytest.mark.parametrize(
    ("tokens", "passage_tokens", "stride"),
    [(1, 64, 32), (64, 64, 32), (65, 64, 32), (1000, 64, 32), (999, 50, 20), (130, 7, 7), (10, 3, 1)],
)
def test_windows_cover_every_token_once_over(tokens: int, passage_tokens: int, stride: int) -> None:
    tokenizer = Pieces()
    ids = tokenizer.encode(" ".join(f"w{i}" for i in range(tokens)))
    index = PassageIndex(ids, tokenizer.decode, passage_tokens=passage_tokens, stride=stride)
    starts, ends = index.starts.tolist(), index.ends.tolist()
    covered = set()
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        assert s == k * stride and e == min(s + passage_tokens, tokens)
        assert k == 0 or e > ends[k - 1]  # each window adds tokens
        covered.update(range(s, e))
    assert covered == set(range(tokens))
    assert ends[-1] == tokens


def test_nothing_to_find() -> None:
    tokenizer = Pieces()
    ids, _s, _e = _document(tokenizer, count=200, at=100)
    assert rank_passages(ids, "What is it, and why?", tokenizer.decode) == []  # only stop words
    assert rank_passages(ids, "Zanzibar quokka?", tokenizer.decode) == []  # no word of the document
    assert rank_passages([], QUESTION, tokenizer.decode) == []
    symbols = Pieces()
    assert rank_passages(symbols.encode("- - . , ! the of 7 " * 50), QUESTION, symbols.decode) == []


def test_bad_options_are_usage_errors() -> None:
    tokenizer = Pieces()
    ids = tokenizer.encode("one two three")
    for kwargs in (
        {"passage_tokens": 0},
        {"stride": 0},
        {"passage_tokens": 16, "stride": 17},
        {"top": 0},
        {"margin": -1},
    ):
        with pytest.raises(UsageError):
            rank_passages(ids, QUESTION, tokenizer.decode, **kwargs)  # type: ignore[arg-type]

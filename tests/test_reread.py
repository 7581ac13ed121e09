"""qa under the hybrid cache quotes the passages its question kept exact (``--reread``)."""

from __future__ import annotations

import itertools

import torch
from conftest import tiny_model
from tinymodel import byte_tokenizer

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.evaluation.needle import text_document
from freqkv_cli.models.loading import LoadedModel
from freqkv_cli.session.prompts import PASSAGES_HEADING
from freqkv_cli.session.session import Session

POLICY = CachePolicy("hybrid", 128, 4, 8, 0.5, exact=0.25)
BOOK = (
    "The miller kept his accounts in a green ledger. On the third day of the fair the river rose, "
    "and the ferryman, whose name was Tobias Venn, carried forty sacks of barley across before noon. "
) * 24


def test_exact_passages_hold_the_ids_streamed_at_their_positions() -> None:
    """Across many rounds, every exact entry's id is the id streamed at its position, and the
    passages are the runs of exact entries, best first by span score, given in stream order."""
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (900,), generator=torch.Generator().manual_seed(7)).tolist()
    question = ids[:12]
    engine = StreamingEngine(model, POLICY)
    engine.feed(question, pin=True, question=True)  # queries captured from these tokens
    engine.feed(ids[12:])
    assert engine.cache.compressions > 10 and engine.selector.queries is not None
    tokens = engine.cache.exact_tokens[0].tolist()
    scores = engine.cache.exact_scores[0].tolist()
    assert len(tokens) == POLICY.exact_slots()
    every = engine.exact_passages(len(tokens), left=0, right=0)
    assert [token for run in every for token in run] == [ids[t] for t in tokens]
    # The runs, found independently: breaks where stream positions are not consecutive.
    runs: list[list[int]] = [[tokens[0]]]
    for token in tokens[1:]:
        runs[-1].append(token) if token == runs[-1][-1] + 1 else runs.append([token])
    assert len(every) == len(runs)
    best = sorted(runs, key=lambda run: -max(scores[tokens.index(t)] for t in run))[:2]
    want = [[ids[t] for t in run] for run in sorted(best, key=lambda run: run[0])]
    assert engine.exact_passages(2, left=0, right=0) == want


def test_passages_are_widened_by_the_text_read_around_the_kept_runs() -> None:
    """A quote is the stretch of the stream around a kept run: up to QUOTE_LEFT tokens before
    and QUOTE_RIGHT after it (compressed in the cache, but read), overlapping quotes merged."""
    from freqkv_cli.engine.passages import QUOTE_LEFT, QUOTE_RIGHT

    model = tiny_model("llama")
    ids = torch.randint(0, 211, (900,), generator=torch.Generator().manual_seed(7)).tolist()
    engine = StreamingEngine(model, POLICY)
    engine.feed(ids[:12], pin=True, question=True)
    engine.feed(ids[12:])
    narrow = engine.exact_passages(3, left=0, right=0)
    wide = engine.exact_passages(3)
    assert len(wide) <= len(narrow) and sum(map(len, wide)) > sum(map(len, narrow))
    spans = []
    for passage in wide:  # each is one stretch of the stream (random ids: found once)
        starts = [b for b in range(len(ids)) if ids[b : b + len(passage)] == passage]
        assert len(starts) == 1
        spans.append((starts[0], starts[0] + len(passage)))
    assert spans == sorted(spans) and all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    runs = []  # (start, end) of each kept run in the stream
    for run in narrow:
        at = next(b for b in range(len(ids)) if ids[b : b + len(run)] == run)
        runs.append((at, at + len(run)))
    for begin, end in spans:  # each quote: its runs, widened by at most the margins
        inside = [run for run in runs if begin <= run[0] and run[1] <= end]
        assert inside, (begin, end)
        assert begin >= inside[0][0] - QUOTE_LEFT and end <= inside[-1][1] + QUOTE_RIGHT
    assert all(any(b <= r0 and r1 <= e for b, e in spans) for r0, r1 in runs)  # every run quoted
    last_run_end = {end: max(r1 for r0, r1 in runs if begin <= r0 and r1 <= end) for begin, end in spans}
    assert any(end - run_end == QUOTE_RIGHT for end, run_end in last_run_end.items())  # widened fully


def test_no_passages_without_a_question_or_outside_the_hybrid() -> None:
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (400,), generator=torch.Generator().manual_seed(8)).tolist()
    for policy in (POLICY, POLICY.with_(kind="freqkv")):
        engine = StreamingEngine(model, policy)
        engine.feed(ids)
        assert engine.cache.compressions > 0 and engine.exact_passages(8) == []


def test_qa_quotes_kept_passages_of_the_document_before_the_question() -> None:
    tokenizer = byte_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=4096)
    loaded = LoadedModel(model, tokenizer, "tiny", "llama", None)
    question = "What was the ferryman called?"
    policy = POLICY.with_(window=512)  # the qa prompt alone is ~120 byte tokens
    quoted = {}
    for reread in (3, 0):
        session = Session(loaded, policy)
        session.read_document(text_document(BOOK), task="qa", question=question, reread=reread)
        quoted[reread] = session.quoted
        assert session.engine.cache.compressions > 5
    assert 1 <= len(quoted[3]) <= 3 and quoted[0] == []
    for passage in quoted[3]:  # byte tokens: a passage is a piece of the book, byte for byte
        assert passage in BOOK
    # ... and it was fed just before the question, after the heading.
    session = Session(loaded, policy)
    session.read_document(text_document(BOOK), task="qa", question=question, reread=3)
    tail = tokenizer.decode(list(session.engine.passages.recent))
    heading = tail.index(PASSAGES_HEADING)
    for passage in quoted[3]:
        assert tail.index(f"- ...{' '.join(passage.split())}...", heading) < tail.index("Question:", heading)

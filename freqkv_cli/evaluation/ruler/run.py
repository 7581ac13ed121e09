"""Running samples through a freqkv :class:`Session` under a cache policy, and their scores.

Two layouts of one sample:

- ``ruler`` (the default): RULER's. One user turn, instruction, context, then the question; the
  assistant's turn opens with the answer prefix. The question comes after the context, so a
  compressed cache chose what to keep without it (the hybrid's selector falls back to key norm).
- ``qa``: ``freqkv qa``'s prompt. The instruction and context go in as the document, the question
  is pinned before it (and asked again after it), so the hybrid keeps exact what the question
  attends to, as it does for a user of ``freqkv qa``.

Decoding is greedy, ``sample.max_new_tokens`` at most; the engine stops at the end of the turn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ...engine.sampling import Sampler
from ...session.prompts import document_prompt
from ...session.session import Session
from ..needle import text_document
from .sample import Counter, Sample
from .scoring import score

LAYOUTS = ("ruler", "qa")


@dataclass
class RulerResult:
    """One sample under one cache: what the model said and its score (0 to 1)."""

    task: str
    cache: str
    length: int
    seed: int
    answers: list[str]
    output: str
    score: float
    tokens: int  # tokens fed before the answer: the prompt in its chat template, the prefix
    seconds: float


@dataclass
class RulerCell:
    """The mean score of one (task, cache, length) over its samples."""

    task: str
    cache: str
    length: int
    samples: int
    score: float


def document_text(sample: Sample) -> str:
    """What the ``qa`` layout reads as the document: the instruction, then the context."""
    return f"{sample.instruction}\n{sample.context}"


def token_counter(session: Session, layout: str = "ruler") -> Counter:
    """The tokens ``run_sample`` will feed for a sample in ``layout``, counted by the model's
    tokenizer in ``session``'s chat template (a fresh session: the first turn's opening)."""
    template, encode = session.template, session.encode

    def ruler(sample: Sample) -> int:
        turn = template.first_before + sample.prompt + template.after
        return len(encode(turn)) + len(encode(sample.answer_prefix))

    def qa(sample: Sample) -> int:
        before, after = document_prompt("qa", sample.question)
        pieces = (template.first_before + before, document_text(sample), after + template.after)
        return sum(len(encode(piece)) for piece in pieces) + len(encode(sample.answer_prefix))

    return ruler if layout == "ruler" else qa


def run_sample(session: Session, sample: Sample, layout: str = "ruler") -> RulerResult:
    """Ask ``session`` (fresh, its policy set) ``sample`` in ``layout``; greedy decoding."""
    started = time.perf_counter()
    if layout == "ruler":
        session.add_user_turn(sample.prompt)
    else:
        session.read_document(text_document(document_text(sample)), task="qa", question=sample.question)
    session.add_answer(sample.answer_prefix)  # the assistant's answer begins with it (RULER)
    tokens = session.tokens_held
    result = session.generate(max_new_tokens=sample.max_new_tokens, sampler=Sampler(temperature=0.0))
    return RulerResult(
        task=sample.task,
        cache=session.policy.kind,
        length=sample.length,
        seed=sample.seed,
        answers=list(sample.answers),
        output=result.text,
        score=score(sample.metric, result.text, sample.answers),
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )


def ruler_scores(results: Sequence[RulerResult]) -> list[RulerCell]:
    """One cell per (task, cache, length), in first-seen order."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for result in results:
        groups.setdefault((result.task, result.cache, result.length), []).append(result.score)
    return [RulerCell(t, c, n, len(s), sum(s) / len(s)) for (t, c, n), s in groups.items()]


def averages(cells: Sequence[RulerCell]) -> dict[tuple[str, int], float]:
    """RULER's average: the mean of the task scores, per (cache, length)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for cell in cells:
        groups.setdefault((cell.cache, cell.length), []).append(cell.score)
    return {key: sum(scores) / len(scores) for key, scores in groups.items()}

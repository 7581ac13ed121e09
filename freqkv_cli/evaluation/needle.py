"""Needle in a haystack: hide a random pass key at a depth of real text, ask for it, score exactly.

The document is real prose (the user's file, or the public-domain excerpt the package ships)
cut so that the whole prompt -- the qa instruction and question, the document, the closing
question -- is ``length`` tokens. The question goes through :class:`Session` with the qa
prompt, so the model sees exactly what ``freqkv qa`` would show it.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..documents import Document
from ..documents.text import TextSource
from ..engine.sampling import Sampler
from ..errors import UsageError
from ..session.prompts import document_prompt
from ..session.session import Session
from .perplexity import first_tokens

NEEDLE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key?"
HAYSTACK_NAME = "haystack.txt"  # Botchan, chapters I-III (public domain), in freqkv_cli/data
# The needle goes to the sentence boundary nearest the requested depth, if one is this close.
_SNAP_CHARS = 400
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


@dataclass
class NeedleDocument:
    """A haystack with one needle. ``at``: the needle's first character in ``text``."""

    text: str
    key: str
    depth: float  # as requested, 0 = start, 1 = end
    at: int
    placed: float  # where it landed: the share of the haystack's characters before it
    repeats: int  # times the haystack text had to be repeated to reach the length


@dataclass
class NeedleTrial:
    cache: str
    length: int  # requested prompt length in tokens
    depth: float
    seed: int
    key: str
    answer: str
    correct: bool
    tokens: int  # tokens actually fed (prompt + document)
    placed: float  # the needle's actual depth
    seconds: float


@dataclass
class NeedleCell:
    """Accuracy at one (cache, length, depth) over seeds."""

    cache: str
    length: int
    depth: float
    trials: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0


def default_haystack() -> str:
    return (resources.files("freqkv_cli") / "data" / HAYSTACK_NAME).read_text(encoding="utf-8")


def make_key(seed: int, length: int, depth: float) -> str:
    """A 5-digit key, the same for every policy at one (seed, length, depth): they get one prompt."""
    # String seeds hash the same way in every process (unlike hash() of a tuple).
    return str(random.Random(f"needle:{seed}:{length}:{depth}").randint(10000, 99999))


def score_answer(answer: str, key: str) -> bool:
    """Exact match: the first number in the answer is the key (``"48213."`` yes, ``"482130"`` no)."""
    numbers = re.findall(r"\d+", answer)
    return bool(numbers) and numbers[0] == key


def needle_position(text: str, depth: float) -> int:
    """A character index near ``depth * len(text)``: a sentence boundary if one is close, else a space."""
    target = round(depth * len(text))
    if target <= 0 or target >= len(text):
        return min(max(target, 0), len(text))
    # At most 2.5% of the text away, so a short haystack keeps its depths apart.
    reach = min(_SNAP_CHARS, len(text) // 40)
    ends = [m.end() for m in _SENTENCE_END.finditer(text, max(0, target - reach), target + reach)]
    if ends:
        return min(ends, key=lambda end: abs(end - target))
    space = text.rfind(" ", max(0, target - reach), target)
    return space + 1 if space >= 0 else target


def build_document(
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
    haystack: str,
    tokens: int,
    depth: float,
    key: str,
    needle: str = NEEDLE,
) -> NeedleDocument:
    """``haystack`` cut to about ``tokens`` tokens in all, with the needle at ``depth``.

    Text shorter than needed is repeated (and ``repeats`` says so): a needle test needs
    the length more than it needs the text to be new.
    """
    needle = needle.format(key=key)
    budget = tokens - len(encode(" " + needle + " "))
    if budget < 1:
        raise UsageError(f"a length of {tokens} tokens leaves no room for a haystack around the needle")
    text, repeats = haystack, 0
    ids = first_tokens(encode, text, budget)
    while ids is None:
        if not haystack.strip():
            raise UsageError("the haystack text is empty")
        text, repeats = text + "\n\n" + haystack, repeats + 1
        ids = first_tokens(encode, text, budget)
    cut = decode(ids).rstrip("\ufffd")  # a cut inside a multi-byte character
    at = needle_position(cut, depth)
    left, right = cut[:at], cut[at:]
    if left and not left[-1].isspace():
        left += " "
    if right and not right[0].isspace():
        right = " " + right
    placed = at / len(cut) if cut else 0.0
    return NeedleDocument(left + needle + right, key, depth, len(left), placed, repeats)


def prompt_overhead(session: Session) -> int:
    """Tokens the qa prompt adds around a document in a fresh session (see Session.read_document)."""
    before, after = document_prompt("qa", QUESTION)
    template = session.template
    return len(session.encode(template.first_before + before)) + len(session.encode(after + template.after))


def text_document(text: str, name: str = "haystack") -> Document:
    return Document(name=name, kind="text", page_count=None, encoding="utf-8", _source=TextSource(text))


def run_needle_trial(
    session: Session,
    document: NeedleDocument,
    *,
    length: int,
    seed: int,
    max_new_tokens: int = 16,
) -> NeedleTrial:
    """Ask ``session`` (fresh, its policy set) for the key in ``document``; greedy decoding."""
    started = time.perf_counter()
    session.read_document(text_document(document.text), task="qa", question=QUESTION)
    return _answer(session, session.policy.kind, document, length, seed, max_new_tokens, started)


def _answer(
    session: Session,
    cache: str,
    document: NeedleDocument,
    length: int,
    seed: int,
    max_new_tokens: int,
    started: float,
) -> NeedleTrial:
    """Decode greedily from a session whose prompt is complete; the trial it makes."""
    tokens = session.tokens_held
    result = session.generate(max_new_tokens=max_new_tokens, sampler=Sampler(temperature=0.0))
    return NeedleTrial(
        cache=cache,
        length=length,
        depth=document.depth,
        seed=seed,
        key=document.key,
        answer=result.text,
        correct=score_answer(result.text, document.key),
        tokens=tokens,
        placed=document.placed,
        seconds=time.perf_counter() - started,
    )


def run_read_first_trials(
    session: Session,
    document: NeedleDocument,
    methods: Sequence[str],
    *,
    length: int,
    seed: int,
    quotes: int = 8,
    max_new_tokens: int = 16,
) -> list[NeedleTrial]:
    """Read ``document`` with no question in sight, keep the memory in a file, then ask from
    that file once per recall method (:mod:`..memory.recall`); greedy decoding. The cache of each
    trial is named ``"<policy> later/<method>"``."""
    from ..memory.recall import recall
    from ..memory.saved import load_session, save_session

    started = time.perf_counter()
    session.read_document(text_document(document.text), task="read", finish=False)
    read_seconds = time.perf_counter() - started
    trials = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "needle.fkv"
        save_session(session, path)
        for method in methods:
            started = time.perf_counter() - read_seconds  # each trial's time includes the read
            asking = load_session(session.loaded, path).session
            passages = recall(asking, QUESTION, quotes, method)
            asking.finish_document("qa", QUESTION, passages=passages)
            cache = f"{session.policy.kind} later/{method}"
            trials.append(_answer(asking, cache, document, length, seed, max_new_tokens, started))
    return trials


def needle_accuracy(trials: Sequence[NeedleTrial]) -> list[NeedleCell]:
    """One cell per (cache, length, depth), in first-seen order."""
    cells: dict[tuple[str, int, float], NeedleCell] = {}
    for trial in trials:
        cell = cells.setdefault(
            (trial.cache, trial.length, trial.depth), NeedleCell(trial.cache, trial.length, trial.depth, 0, 0)
        )
        cell.trials += 1
        cell.correct += int(trial.correct)
    return list(cells.values())

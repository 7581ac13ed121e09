"""Words, keys and values for the synthetic tasks, all drawn from a seeded ``random.Random``.

The English words come from the lists the ``wonderwords`` package ships (nouns, adjectives,
verbs; MIT): plain text files read directly, so no API of the package is relied on. Words on its
profanity list are left out. docs/DESIGN.md says why this package.
"""

from __future__ import annotations

import functools
import random
import string
import uuid
from importlib import resources

from ...errors import UsageError

KINDS = ("noun", "adjective", "verb")
# RULER's noise haystack: the same five sentences, repeated.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@functools.cache
def _asset(kind: str) -> frozenset[str]:
    try:
        folder = resources.files("wonderwords") / "assets"
        text = (folder / f"{kind}list.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise UsageError("the RULER tasks need the wonderwords package: pip install wonderwords") from None
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


@functools.cache
def words(kind: str) -> tuple[str, ...]:
    """Lower-case alphabetic words of one kind (``noun``, ``adjective``, ``verb``), sorted."""
    banned = _asset("profanity")
    return tuple(sorted(w for w in _asset(kind) if w.isalpha() and w.isascii() and w not in banned))


@functools.cache
def all_words() -> tuple[str, ...]:
    """Every kind together, each word once, sorted (so a seed means the same draw everywhere)."""
    return tuple(sorted({w for kind in KINDS for w in words(kind)}))


def word_key(rng: random.Random) -> str:
    """An ``adjective-noun`` key, as RULER's needles have (``"fluffy-lantern"``)."""
    return f"{rng.choice(words('adjective'))}-{rng.choice(words('noun'))}"


def number_value(rng: random.Random) -> str:
    """A 7-digit number."""
    return str(rng.randint(1_000_000, 9_999_999))


def uuid_value(rng: random.Random) -> str:
    """A UUID4 from the seeded generator (never the system's entropy)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


MAKERS = {"words": word_key, "numbers": number_value, "uuids": uuid_value}


def distinct(rng: random.Random, kind: str, count: int, avoid: set[str] | None = None) -> list[str]:
    """``count`` different values of ``kind`` (``words``, ``numbers``, ``uuids``), none in ``avoid``."""
    seen = set(avoid or ())
    out: list[str] = []
    while len(out) < count:
        value = MAKERS[kind](rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def variable_name(rng: random.Random) -> str:
    """Five upper-case letters, a variable of the variable-tracking task."""
    return "".join(rng.choices(string.ascii_uppercase, k=5))


def coded_word(rng: random.Random) -> str:
    """A made-up lower-case word of 3 to 6 letters (fwe's 'coded' words)."""
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))


def task_rng(task: str, length: int, seed: int, part: str = "") -> random.Random:
    """One generator per (task, length, seed): every policy gets the same prompt. String seeds
    hash the same way in every process (unlike hash() of a tuple)."""
    return random.Random(f"ruler:{task}:{length}:{seed}:{part}")

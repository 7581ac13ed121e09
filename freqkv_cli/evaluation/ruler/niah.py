"""Needle in a haystack, RULER's eight variants (``niah_*``).

A needle is the sentence "One of the special magic numbers for KEY is: VALUE." Keys are
``adjective-noun`` words or UUIDs, values 7-digit numbers or UUIDs. The haystack is the noise
sentences (``noise``), real text (``text``) or other needles with other keys (``needles``).

- single: one needle, its value asked;
- multikey: ``num_keys`` needles with distinct keys, one key asked (the others distract);
- multivalue: one key with ``num_values`` values, all asked;
- multiquery: ``num_keys`` keys, ``num_queries`` of them asked at once.

Metric: ``all``, the share of the asked values found in the answer. Needles sit at depths drawn
from 40 evenly spaced ones in [0, 1], without replacement. The prompt's wording is RULER's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .haystack import insert_at_depths, noise, text_words, words_of
from .sample import Counter, Sample, fit
from .words import distinct, task_rng

DEPTHS = tuple(i / 39 for i in range(40))
INSTRUCTION = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards."
)
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
QUESTION = "What are all the special magic {kind} for {keys} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic {kind} for {keys} mentioned in the provided text are"


def _listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b, and c``."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


@dataclass(frozen=True)
class NeedleTask:
    """One RULER needle task: where the needles hide, what they are, how many, what is asked."""

    name: str
    haystack: str = "text"  # "noise", "text" or "needles"
    keys: str = "words"  # "words" or "uuids"
    values: str = "numbers"  # "numbers" or "uuids"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    max_new_tokens: int = 128
    metric: str = "all"

    def generate(self, length: int, seed: int, count: Counter, text: str) -> Sample:
        """The sample for ``(length, seed)``, its prompt fitted to ``length - max_new_tokens``
        tokens by ``count``; ``text`` is the real-text haystack (used by ``text`` only)."""
        words = words_of(text) if self.haystack == "text" else []
        return fit(lambda n: self.build(length, seed, n, words), count, length - self.max_new_tokens)

    def build(self, length: int, seed: int, units: int, words: list[str]) -> Sample:
        """The sample with ``units`` haystack units (noise repeats, words, distractor needles)."""
        rng = task_rng(self.name, length, seed)  # the same needles whatever ``units`` is
        kind = "uuids" if self.values == "uuids" else "numbers"
        keys = distinct(rng, self.keys, self.num_keys)
        values = [distinct(rng, self.values, self.num_values) for _ in keys]
        needles = [
            NEEDLE.format(kind=kind, key=k, value=v) for k, vs in zip(keys, values, strict=True) for v in vs
        ]
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        order = list(range(len(needles)))
        rng.shuffle(order)  # which needle lands at which depth
        placed = [needles[i] for i in order]
        asked = rng.sample(range(len(keys)), self.num_queries)
        context = self._haystack(rng, units, words, placed, depths, kind, set(keys))
        queried = [keys[i] for i in asked]
        return Sample(
            task=self.name,
            length=length,
            seed=seed,
            instruction=INSTRUCTION.format(kind=kind),
            context=context,
            question=QUESTION.format(kind=kind, keys=_listed(queried)),
            answer_prefix=ANSWER_PREFIX.format(kind=kind, keys=_listed(queried)),
            answers=tuple(v for i in asked for v in values[i]),
            metric=self.metric,
            max_new_tokens=self.max_new_tokens,
        )

    def _haystack(
        self,
        rng: random.Random,
        units: int,
        words: list[str],
        needles: list[str],
        depths: list[float],
        kind: str,
        keys: set[str],
    ) -> str:
        if self.haystack == "noise":
            return insert_at_depths(noise(units), needles, depths)
        if self.haystack == "text":
            return insert_at_depths(text_words(words, units), needles, depths)
        # Other needles, other keys: a distractor generator of its own, so the first ``units``
        # distractors are the same whatever their number (the fit's count grows with it).
        other = random.Random(f"{rng.random()}:distractors")
        seen = set(keys)
        distractors = []
        for _ in range(units):
            key = distinct(other, self.keys, 1, avoid=seen)[0]
            seen.add(key)
            value = distinct(other, self.values, 1)[0]
            distractors.append(NEEDLE.format(kind=kind, key=key, value=value))
        return insert_at_depths(distractors, needles, depths, joiner="\n")

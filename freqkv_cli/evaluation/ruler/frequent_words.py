"""Frequent-word extraction (``fwe``): the three most frequent words of a long coded text.

The text is made-up lower-case words (``coded``: no meaning to lean on) drawn from a Zipf law of
exponent ``alpha`` over a vocabulary of ``vocabulary`` words: the most frequent word takes
about 60% of the text at alpha 2, the third about 7%. The answer is the three most frequent
words as counted in the text drawn. Metric: ``all``, the share of the three named.
"""

from __future__ import annotations

import itertools
from collections import Counter as Tally
from dataclasses import dataclass

from .sample import Counter, Sample, fit
from .words import coded_word, task_rng

INSTRUCTION = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words."
)
QUESTION = (
    "Question: Do not provide any explanation. "
    "What are the three most frequently appeared words in the above coded text?"
)
ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


@dataclass(frozen=True)
class FrequentWords:
    """RULER's ``fwe``: Zipf's law with ``alpha`` 2 over ``vocabulary`` coded words, top 3 asked."""

    name: str = "fwe"
    alpha: float = 2.0
    vocabulary: int = 2000
    top: int = 3
    max_new_tokens: int = 50
    metric: str = "all"

    def generate(self, length: int, seed: int, count: Counter, text: str = "") -> Sample:
        """The sample for ``(length, seed)`` fitted to ``length - max_new_tokens`` tokens."""
        return fit(lambda n: self.build(length, seed, n), count, length - self.max_new_tokens)

    def build(self, length: int, seed: int, units: int) -> Sample:
        """The sample with ``units`` coded words (at least ``top``, so that there is an answer)."""
        rng = task_rng(self.name, length, seed)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < self.vocabulary:  # distinct coded words, rank 1 first
            word = coded_word(rng)
            if word not in seen:
                seen.add(word)
                words.append(word)
        weights = list(itertools.accumulate((rank + 1) ** -self.alpha for rank in range(self.vocabulary)))
        # choices() with cumulative weights draws one number per word: n words are a prefix of n + 1.
        text = rng.choices(words, cum_weights=weights, k=max(units, self.top))
        tally = Tally(text)
        rank = {word: index for index, word in enumerate(words)}
        answers = sorted(tally, key=lambda w: (-tally[w], rank[w]))[: self.top]
        return Sample(
            task=self.name,
            length=length,
            seed=seed,
            instruction=INSTRUCTION,
            context=" ".join(text),
            question=QUESTION,
            answer_prefix=ANSWER_PREFIX,
            answers=tuple(answers),
            metric=self.metric,
            max_new_tokens=self.max_new_tokens,
        )

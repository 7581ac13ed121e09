"""Common-word extraction (``cwe``): which words of a long numbered list come most often?

``num_common`` words appear ``freq_common`` times each, every other word ``freq_uncommon``
times, shuffled into one numbered list; the list grows with the length by adding uncommon
words. The answer is the common words. Metric: ``all``, the share of the common words named. As
in RULER, one worked example (a short list, its answer) comes first. Words: English nouns,
adjectives and verbs from the ``wonderwords`` lists (words.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from ...errors import UsageError
from .sample import Counter, Sample, fit
from .words import all_words, task_rng

INSTRUCTION = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often."
)
QUESTION = "Question: What are the {count} most common words in the above list?"
ANSWER_PREFIX = " Answer: The top {count} words that appear most often in the list are:"


def numbered(rng: random.Random, common: list[str], uncommon: list[str], often: int, seldom: int) -> str:
    """``common`` words ``often`` times and ``uncommon`` ones ``seldom`` times, shuffled, numbered."""
    entries = [w for w in common for _ in range(often)] + [w for w in uncommon for _ in range(seldom)]
    rng.shuffle(entries)
    return " ".join(f"{i}. {w}" for i, w in enumerate(entries, 1))


@dataclass(frozen=True)
class CommonWords:
    """RULER's ``cwe`` (its defaults: 10 common words 30 times, the others 3 times)."""

    name: str = "cwe"
    num_common: int = 10
    freq_common: int = 30
    freq_uncommon: int = 3
    example: bool = True
    max_new_tokens: int = 120
    metric: str = "all"

    def generate(self, length: int, seed: int, count: Counter, text: str = "") -> Sample:
        """The sample for ``(length, seed)`` fitted to ``length - max_new_tokens`` tokens; the
        list cannot outgrow the word list (8,039 words: some 100k tokens). Where the
        common words' ``freq_common`` repeats alone pass the length (300 entries: about 2.5k
        tokens for SmolLM2's tokenizer), they come 20, 15 or 10 times instead, the first that
        fits: still several times as often as the others."""
        most = len(all_words()) - 2 * self.num_common  # the example's words are drawn apart
        if most < 1:
            raise UsageError("the word list is too short for cwe")
        budget = length - self.max_new_tokens
        tries = [f for f in (self.freq_common, 20, 15, 10) if f <= self.freq_common]
        for often in tries[:-1]:
            task = replace(self, freq_common=often)
            if count(task.build(length, seed, 0)) <= budget:
                return fit(lambda n, task=task: task.build(length, seed, n), count, budget, most)
        task = replace(self, freq_common=tries[-1])
        return fit(lambda n: task.build(length, seed, n), count, budget, most)  # fits, or says why not

    def build(self, length: int, seed: int, units: int) -> Sample:
        """The sample with ``units`` uncommon words."""
        rng = task_rng(self.name, length, seed)
        # One shuffle of the vocabulary: the common words first, the uncommon ones a prefix of
        # the rest, so one more unit adds one word and changes nothing else but the order.
        vocabulary = list(all_words())
        rng.shuffle(vocabulary)
        shown = vocabulary[: self.num_common]  # the example's common words
        common = vocabulary[self.num_common : 2 * self.num_common]
        uncommon = vocabulary[2 * self.num_common : 2 * self.num_common + units]
        instruction = INSTRUCTION
        if self.example:
            # A short list (common words 3 times, others once) whose words the real list avoids
            # but for the uncommon ones, which are only ever seen once there.
            example_rng = task_rng(self.name, length, seed, "example")
            few = example_rng.sample(vocabulary[2 * self.num_common :], self.num_common)
            listed = numbered(example_rng, shown, few, 3, 1)
            question = QUESTION.format(count=self.num_common)
            answer = ANSWER_PREFIX.format(count=self.num_common) + " " + " ".join(shown)
            instruction = f"{INSTRUCTION}\n{listed}\n{question}{answer}\n\n{INSTRUCTION}"
        return Sample(
            task=self.name,
            length=length,
            seed=seed,
            instruction=instruction,
            context=numbered(rng, common, uncommon, self.freq_common, self.freq_uncommon),
            question=QUESTION.format(count=self.num_common),
            answer_prefix=ANSWER_PREFIX.format(count=self.num_common),
            answers=tuple(common),
            metric=self.metric,
            max_new_tokens=self.max_new_tokens,
        )

"""One prompt of a task, laid out as RULER lays it out, and fitting it to a token length."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ...errors import UsageError

# Tokens a fitted prompt is allowed to take (the tokenizer's own count of what is fed).
Counter = Callable[["Sample"], int]


@dataclass(frozen=True)
class Sample:
    """A task's prompt and its reference answers.

    The user's turn is ``instruction``, the ``context`` (the haystack), then the ``question``:
    the question comes after the context, as in RULER, so a cache that compresses the context
    has not seen it. ``answer_prefix`` opens the assistant's turn (RULER's answer prefix), and
    the model goes on from it.
    """

    task: str
    length: int  # requested tokens in all: the prompt plus the answer's max_new_tokens
    seed: int
    instruction: str
    context: str
    question: str
    answer_prefix: str
    answers: tuple[str, ...]
    metric: str  # "all" or "part" (scoring.py)
    max_new_tokens: int
    units: int = 0  # haystack units fitted (sentences, words, list entries)
    tokens: int = 0  # prompt tokens as counted when fitted (0: not fitted)

    @property
    def prompt(self) -> str:
        """The user's message: instruction, context, question, one line break apart."""
        return f"{self.instruction}\n{self.context}\n{self.question}"


def fit(build: Callable[[int], Sample], count: Counter, budget: int, most: int = 1 << 24) -> Sample:
    """The sample with the most haystack units ``n`` (``build(n)``) whose prompt is at most
    ``budget`` tokens: never over it, and under it by less than one unit's tokens when the
    count grows with ``n`` (the generators make it so: one more unit adds text)."""
    smallest = build(0)
    used = count(smallest)
    if used > budget:
        raise UsageError(
            f"{smallest.task}: a length of {smallest.length} tokens is too short: the prompt without "
            f"any haystack takes {used} tokens and the answer {smallest.max_new_tokens}"
        )
    low, high = 0, 1
    while high <= most and count(build(high)) <= budget:  # double until one does not fit
        low, high = high, high * 2
    high = min(high, most + 1)
    while high - low > 1:  # count(build(low)) fits, count(build(high)) does not
        middle = (low + high) // 2
        if count(build(middle)) <= budget:
            low = middle
        else:
            high = middle
    best = build(low)
    return replace(best, units=low, tokens=count(best))

"""RULER's scores: string match of the reference answers in the model's output.

- ``all`` (niah, vt, cwe, fwe): the share of the reference values that occur in the output,
  case-insensitive (RULER's ``string_match_all``); 4 of 5 variables named scores 0.8.
- ``part`` (RULER's QA tasks): 1 when any reference occurs in the output, else 0
  (``string_match_part``). The QA tasks need SQuAD and HotpotQA, which are downloads, so no
  generated task uses it; it is here so that a QA task added later is scored as RULER scores it.

A task's score is the mean over its samples; RULER reports it times 100.
"""

from __future__ import annotations

from collections.abc import Sequence


def _clean(text: str) -> str:
    # RULER strips the output and drops control characters before matching.
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t").strip().lower()


def score_all(output: str, answers: Sequence[str]) -> float:
    """The share of ``answers`` found in ``output``."""
    if not answers:
        return 0.0
    text = _clean(output)
    return sum(answer.lower() in text for answer in answers) / len(answers)


def score_part(output: str, answers: Sequence[str]) -> float:
    """1.0 when any of ``answers`` is found in ``output``."""
    text = _clean(output)
    return float(any(answer.lower() in text for answer in answers))


METRICS = {"all": score_all, "part": score_part}


def score(metric: str, output: str, answers: Sequence[str]) -> float:
    """The score of ``output`` by the named metric (``all`` or ``part``)."""
    return METRICS[metric](output, answers)

"""The haystacks needles hide in: RULER's noise sentences, real text, or other needles.

Real text is the excerpt of Botchan (Natsume Soseki, public domain) the package ships for
``eval needle``, or a text the user gives. RULER uses Paul Graham's essays, a download; any long
prose does the same job: text the needles do not stand out from by form.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import UsageError
from ..needle import default_haystack, needle_position
from .words import NOISE

__all__ = ["default_haystack", "insert_at_depths", "noise", "text_words", "words_of"]


def noise(units: int) -> list[str]:
    """``units`` copies of the noise sentences."""
    return [NOISE] * units


def words_of(text: str) -> list[str]:
    """The haystack text as words (the unit real text is fitted in)."""
    found = text.split()
    if not found:
        raise UsageError("the haystack text is empty")
    return found


def text_words(words: Sequence[str], units: int) -> str:
    """The first ``units`` words of the text, read again from its start when it runs out."""
    rounds, rest = divmod(units, len(words))
    return " ".join([*list(words) * rounds, *words[:rest]])


def insert_at_depths(
    units: list[str] | str, needles: Sequence[str], depths: Sequence[float], joiner: str = " "
) -> str:
    """``needles`` placed at ``depths`` (0 = start, 1 = end) of the haystack, in order.

    A list of units (noise sentences, distractor needles) takes each needle between two units;
    text takes it at the sentence boundary nearest its depth (``eval needle``'s rule).
    """
    pairs = sorted(zip(depths, needles, strict=True), key=lambda pair: pair[0])
    if isinstance(units, str):
        text = units
        for depth, needle in reversed(pairs):  # from the end: earlier positions stay valid
            at = needle_position(text, depth)
            left, right = text[:at].rstrip(), text[at:].lstrip()
            text = " ".join(part for part in (left, needle, right) if part)
        return text
    pieces = list(units)
    for depth, needle in reversed(pairs):
        pieces.insert(round(depth * len(units)), needle)
    return joiner.join(pieces)

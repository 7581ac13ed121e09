"""Comma lists on the command line: ``--lengths 4k,8k``, ``--cache full,freqkv``, ``--depths 0,0.5,1``."""

from __future__ import annotations

import math

from ..cache.policy import POLICIES
from ..errors import UsageError
from ..sizes import parse_size


def _items(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"{flag} '{text}': give a comma-separated list without empty items")
    return items


def _unique(values: list) -> list:
    """First occurrence order; a repeated value would only repeat work."""
    return list(dict.fromkeys(values))


def parse_lengths(text: str, flag: str = "--lengths") -> list[int]:
    """``"4k,8k"`` -> ``[4096, 8192]`` (sorted, duplicates dropped)."""
    values = []
    for item in _items(text, flag):
        try:
            values.append(parse_size(item))
        except UsageError:
            raise UsageError(f"{flag}: '{item}' is not a length: use numbers like 4096 or 4k") from None
    if min(values) < 2:
        raise UsageError(f"{flag}: a length must be at least 2 tokens")
    return sorted(_unique(values))


def parse_policies(text: str, flag: str = "--cache") -> list[str]:
    """``"full,sink,freqkv"`` -> the policy names, in the order given."""
    values = [item.lower() for item in _items(text, flag)]
    for value in values:
        if value not in POLICIES:
            raise UsageError(f"{flag}: '{value}' is not a policy: use one of {', '.join(POLICIES)}")
    return _unique(values)


def parse_depths(text: str, flag: str = "--depths") -> list[float]:
    """``"0,0.25,1"`` -> fractions of the document in [0, 1], sorted."""
    values = []
    for item in _items(text, flag):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"{flag}: '{item}' is not a number between 0 and 1") from None
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag}: '{item}' must be between 0 (start) and 1 (end)")
        values.append(value)
    return sorted(_unique(values))

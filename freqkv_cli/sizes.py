"""Parse and print sizes: token counts given on the command line, bytes in reports.

Suffixes are binary (k = 1024) because context windows are powers of two:
``--window 32k`` means 32768 tokens, the size a model card calls "32K".
"""

from __future__ import annotations

import re

from freqkv_cli.errors import UsageError

_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# A plain decimal number (no sign, no exponent) and an optional suffix.
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmg]?)")


def parse_size(text: str) -> int:
    """Parse a size such as ``4096``, ``32k``, ``32K``, ``1.5k`` or ``1m`` into a positive int.

    Raises UsageError for anything else (empty, negative, zero, unknown suffix,
    or a fraction that does not come to a whole number without a suffix).
    """
    error = UsageError(f"invalid size '{text}': use a number like 4096, 32k or 1m")
    match = _SIZE_RE.fullmatch(text.strip().lower())
    if match is None:
        raise error
    number, suffix = match.groups()
    if not suffix and not number.isdigit():
        raise error  # "1.5" tokens is meaningless; "1.5k" is fine
    value = round(float(number) * _SUFFIXES[suffix])
    if value < 1:
        raise error
    return value


def format_size(n: int) -> str:
    """The short form ``parse_size`` accepts back: 32768 -> "32k", 1048576 -> "1m", 5000 -> "5000"."""
    for suffix, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def format_bytes(n: int) -> str:
    """Human-readable bytes in binary units: 12 -> "12 B", 402653184 -> "384.0 MiB"."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        # Switch unit before printing "1024.0 KiB" (rounding would show 1024.0).
        if round(value, 1) < 1024 or unit == "TiB":
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """A count with thousands separators: 32768 -> "32,768".

    Exact rather than "32.8k": with k = 1024 on input, a rounded decimal "k"
    on output would make ``--window 32k`` print as "32.8k" and look wrong.
    """
    return f"{n:,}"

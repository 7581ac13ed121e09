"""Sizes on the command line (``--window 32k``) and in reports."""

from __future__ import annotations

import pytest

from freqkv_cli.errors import UsageError
from freqkv_cli.sizes import format_bytes, format_count, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("1", 1),
        ("32k", 32768),
        ("32K", 32768),
        (" 32k ", 32768),
        ("32 k", 32768),
        ("1m", 1048576),
        ("1M", 1048576),
        ("1.5k", 1536),
        ("0.5k", 512),
        (".5k", 512),
        ("2g", 2 * 1024**3),
        ("128000", 128000),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "32q",
        "",
        "   ",
        "-3",
        "0",
        "0k",
        "0.0001k",
        "1.5",
        "k",
        "1e3",
        "1kk",
        "32kb",
        "inf",
        "nan",
        "+5",
        "1,024",
        "0x10",
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        parse_size(text)
    message = str(excinfo.value)
    assert message == f"invalid size '{text}': use a number like 4096, 32k or 1m"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (12, "12 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (384 * 1024**2, "384.0 MiB"),
        (int(1.5 * 1024**3), "1.5 GiB"),
        (1024**2 - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (3 * 1024**4, "3.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(n: int, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "0"), (999, "999"), (32768, "32,768"), (1048576, "1,048,576")]
)
def test_format_count(n: int, expected: str) -> None:
    assert format_count(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"), [(32768, "32k"), (1048576, "1m"), (2 * 1024**3, "2g"), (5000, "5000"), (1536, "1536")]
)
def test_format_size_round_trips(n: int, expected: str) -> None:
    assert format_size(n) == expected
    assert parse_size(expected) == n

"""Reading raw input and turning text bytes into str: the cheap checks done before any model loads."""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from freqkv_cli.documents.document import Page
from freqkv_cli.errors import InputError

STDIN_NAME = "<stdin>"
_SNIFF_BYTES = 8192
# Control bytes that never occur in text; \t \n \v \f \r and ESC (ANSI colour codes in logs) are allowed.
_CONTROL = frozenset(range(0x00, 0x09)) | frozenset(range(0x0E, 0x1B)) | frozenset(range(0x1C, 0x20)) | {0x7F}
_MAX_CONTROL_SHARE = 0.05
# Known binary formats, for a clearer message than "binary file".
_MAGIC = (
    (b"PK\x03\x04", "a zip archive (.docx, .epub and .odt files are zips)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (.doc/.xls)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "an executable"),
)
# BOMs, longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def one_line(message: str) -> str:
    """Collapse newlines so that an error stays one line even with odd file names or library messages."""
    return " ".join(message.split())


def read_input(path: str | os.PathLike[str], stdin: BinaryIO | None) -> tuple[str, bytes]:
    """Return ``(name, bytes)`` for a path or ``-`` (standard input), or raise InputError."""
    if os.fspath(path) == "-":
        return STDIN_NAME, _read_stdin(stdin)
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file; check the path") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the permissions of the file and its folders") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror}); check the path") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{name}: is a directory; pass a document file (.txt, .md, .pdf, ...)")
    try:
        # Pipes and process substitutions (<(...)) have no size up front, so read, don't stat.
        with open(name, "rb") as handle:
            data = handle.read()
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the file's permissions (e.g. chmod +r)") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror}); check the file") from None
    if not data:
        raise InputError(f"{name}: the file is empty; pass a document that has some text")
    return name, data


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    if stdin is None:
        import sys

        stdin = sys.stdin.buffer
    # Reading a terminal would wait for typing; with '-' the user meant to pipe something in.
    isatty = getattr(stdin, "isatty", None)
    if isatty is not None and isatty():
        raise InputError(f"{STDIN_NAME}: nothing is piped in; use e.g. '- < book.txt', or pass a file path")
    data = stdin.read()
    if not data:
        raise InputError(f"{STDIN_NAME}: standard input is empty; pipe a document in, or pass a file path")
    return data


def binary_kind(data: bytes) -> str | None:
    """Describe ``data`` if it looks like a binary (non-text) file, else None.

    Call only for data without a BOM and not UTF-16 (those contain NUL bytes).
    """
    for magic, description in _MAGIC:
        if data.startswith(magic):
            return description
    sample = data[:_SNIFF_BYTES]
    if b"\x00" in sample:
        return "a binary file (it contains NUL bytes)"
    controls = sum(1 for byte in sample if byte in _CONTROL)
    if controls > _MAX_CONTROL_SHARE * len(sample):
        return "a binary file (it is full of control characters)"
    return None


def _bomless_utf16(data: bytes) -> str | None:
    """Guess UTF-16 without a BOM: mostly-ASCII UTF-16 has a NUL in every other byte."""
    sample = data[: _SNIFF_BYTES - _SNIFF_BYTES % 2]
    if len(sample) < 4 or len(sample) % 2:
        return None
    even_nuls = sample[0::2].count(0) / (len(sample) // 2)
    odd_nuls = sample[1::2].count(0) / (len(sample) // 2)
    if odd_nuls > 0.7 and even_nuls < 0.05:
        return "utf-16-le"
    if even_nuls > 0.7 and odd_nuls < 0.05:
        return "utf-16-be"
    return None


def decode_text(name: str, data: bytes) -> tuple[str, str, list[str]]:
    """Decode text bytes; return ``(text, encoding, warnings)`` or raise InputError if it is binary.

    UTF-8 (BOM stripped), UTF-16/32 by BOM, BOM-less UTF-16 by its NUL pattern; anything else that
    is not valid UTF-8 is read as Windows-1252/Latin-1 with a warning, so decoding never fails.
    """
    warnings: list[str] = []
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _decode_lenient(data[len(bom) :], encoding, warnings)
            return _finish(name, text), encoding, warnings
    guessed = _bomless_utf16(data)
    if guessed is not None:
        try:
            text = data.decode(guessed)
        except UnicodeDecodeError:
            pass  # NUL pattern was a coincidence: let the binary check below judge it
        else:
            warnings.append(f"no byte-order mark; read as {guessed.upper()} from its byte pattern")
            return _finish(name, text), guessed, warnings
    kind = binary_kind(data)
    if kind is not None:
        raise InputError(f"{name}: this is {kind}, not text or PDF; convert it to .txt or .pdf first")
    try:
        return _finish(name, data.decode("utf-8")), "utf-8", warnings
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
    # UTF-8 with a few broken bytes (a bad copy-paste, a cut multi-byte character) is still UTF-8:
    # reading it all as Latin-1 would garble every correct accent. Latin-1 text almost never
    # happens to form valid multi-byte UTF-8 sequences, so count those against the errors.
    replaced = data.decode("utf-8", errors="replace")
    errors = replaced.count("\ufffd")
    non_ascii = len(replaced) - len(replaced.encode("ascii", errors="ignore"))
    if non_ascii - errors > errors:
        warnings.append(f"invalid UTF-8 ({bad}, {errors} in all); bad bytes replaced with \ufffd")
        return _finish(name, replaced), "utf-8", warnings
    try:
        # Windows-1252 agrees with Latin-1 on printable bytes and also maps 0x80-0x9f (curly quotes,
        # dashes) to characters instead of invisible C1 controls; five bytes are undefined in it.
        text, encoding = data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    label = "Windows-1252" if encoding == "cp1252" else "Latin-1"
    warnings.append(f"latin-1 fallback: not valid UTF-8 ({bad}); read as {label}, some characters may be wrong")
    return _finish(name, text), encoding, warnings


def _decode_lenient(data: bytes, encoding: str, warnings: list[str]) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        warnings.append(
            f"invalid {encoding.upper()} at offset {exc.start} despite the byte-order mark; "
            "bad bytes replaced with \ufffd"
        )
        return data.decode(encoding, errors="replace")


def _finish(name: str, text: str) -> str:
    # One newline convention, so that token counts and page text do not depend on the OS that wrote it.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(f"{name}: contains only whitespace; pass a document that has some text")
    return text


class TextSource:
    """A decoded text document: one page holding all the text."""

    def __init__(self, text: str) -> None:
        self._text = text

    def iter_pages(self, warnings: list[str]) -> Iterator[Page]:
        yield Page(1, self._text)

"""Reading raw input and turning text bytes into str: the cheap checks done before any model loads."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from freqkv_cli.documents.document import Page
from freqkv_cli.documents.sniff import (
    READABLE,
    SNIFF_BYTES,
    binary_kind,
    bom_encoding,
    bomless_utf16,
    check_head,
    not_readable,
)
from freqkv_cli.errors import InputError

STDIN_NAME = "<stdin>"


def read_input(path: str | os.PathLike[str], stdin: BinaryIO | None) -> tuple[str, bytes]:
    """Return ``(name, bytes)`` for a path or ``-`` (standard input), or raise InputError.

    The first bytes are judged before the rest is read, so a large binary file fails at once.
    """
    if os.fspath(path) == "-":
        return STDIN_NAME, _read_stdin(stdin)
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file; check the path") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the permissions of its folders") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror}); check the path") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{name}: is a directory; pass a document file (.txt, .md, .pdf, ...)")
    try:
        # Read rather than trust st_size: pipes and process substitutions (<(...)) report 0.
        with open(name, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if not head:
                raise InputError(f"{name}: the file is empty; pass a document that has some text")
            check_head(name, head)
            return name, head + handle.read()
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the file's permissions (e.g. chmod +r)") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror}); check the file") from None


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    if stdin is None:
        import sys

        if sys.stdin is None:  # closed, or a GUI launcher without a console
            raise InputError(f"{STDIN_NAME}: there is no standard input; pass a file path instead of '-'")
        stdin = sys.stdin.buffer
    # Reading a terminal would wait for typing; with '-' the user meant to pipe something in.
    isatty = getattr(stdin, "isatty", None)
    if isatty is not None and isatty():
        raise InputError(f"{STDIN_NAME}: nothing is piped in; use e.g. '- < book.txt', or pass a file path")
    head = stdin.read(SNIFF_BYTES)
    if not head:
        raise InputError(f"{STDIN_NAME}: standard input is empty; pipe a document in, or pass a file path")
    check_head(STDIN_NAME, head)
    return head + stdin.read()


def decode_text(name: str, data: bytes) -> tuple[str, str, list[str]]:
    """Decode text bytes; return ``(text, encoding, warnings)`` or raise InputError if it is binary.

    UTF-8 (BOM stripped), UTF-16/32 by BOM, BOM-less UTF-16 by its NUL pattern; anything else that
    is not valid UTF-8 is read as Windows-1252/Latin-1 with a warning, so decoding never fails.
    """
    warnings: list[str] = []
    bom = bom_encoding(data)
    if bom is not None:
        encoding, length = bom
        return _finish(name, _decode_lenient(data[length:], encoding, warnings)), encoding, warnings
    guessed = bomless_utf16(data)
    if guessed is not None:
        try:
            text = data.decode(guessed)
        except UnicodeDecodeError:
            pass  # the NUL pattern was a coincidence: let the binary check below judge
        else:
            warnings.append(f"no byte-order mark; read as {guessed.upper()} from its byte pattern")
            return _finish(name, text), guessed, warnings
    kind = binary_kind(data)
    if kind is not None:
        raise InputError(not_readable(name, kind))
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
    warnings.append(
        f"latin-1 fallback: not valid UTF-8 ({bad}); read as {label}, some characters may be wrong"
    )
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
    # One rule for NUL, wherever it is (the first 8 KiB are judged before the rest is read, for
    # speed): text never holds a NUL character, a file that does is binary.
    nul = text.find("\x00")
    if nul >= 0:
        raise InputError(
            f"{name}: this is a binary file (it contains NUL bytes, the first at character {nul:,}), "
            f"not a document freqkv reads ({READABLE}); convert it to text first"
        )
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

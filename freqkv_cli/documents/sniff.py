"""What is this file? PDF, a zip package (EPUB, DOCX), HTML, text (and in which Unicode form),
or binary: judged from its bytes, the name only breaking a tie (an HTML fragment named .html)."""

from __future__ import annotations

import codecs

from freqkv_cli.errors import InputError

SNIFF_BYTES = 8192  # enough to judge; read before the rest, so a 2 GB video is refused at once
# The header may follow up to 1 KiB of junk (mail or HTTP leftovers); PDF readers accept that.
_PDF_HEADER_WINDOW = 1024
# Control bytes that never occur in text; \t \n \v \f \r and ESC (ANSI colour codes in logs) are allowed.
_CONTROL = frozenset(range(0x00, 0x09)) | frozenset(range(0x0E, 0x1B)) | frozenset(range(0x1C, 0x20)) | {0x7F}
_MAX_CONTROL_SHARE = 0.05
ZIP_MAGIC = b"PK\x03\x04"  # EPUB and DOCX are zips; which one is judged from the whole file
READABLE = "text, Markdown, PDF, HTML, EPUB or DOCX"
_HTML_NAMES = (".html", ".htm", ".xhtml")
_HTML_START = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")
_HTML_TAGS = (b"<html", b"<body", b"<head", b"<p>", b"<div", b"<title")
# Known binary formats, for a clearer message than "binary file".
_MAGIC = (
    (ZIP_MAGIC, "a zip archive that is neither an EPUB nor a Word document"),
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
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def one_line(message: str) -> str:
    """Collapse newlines so that an error stays one line even with odd file names or library messages."""
    return " ".join(message.split())


def is_pdf(data: bytes) -> bool:
    """True when ``data`` carries a ``%PDF-`` header (what readers go by, whatever the file name)."""
    return b"%PDF-" in data[:_PDF_HEADER_WINDOW]


def is_zip(data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC)


def is_html(name: str, data: bytes) -> bool:
    """True for a web page: it starts as one (``<!DOCTYPE html``, ``<html``, an XHTML prolog
    followed by ``<html``), or is named .html/.htm/.xhtml and holds a tag of one."""
    head = data[:_PDF_HEADER_WINDOW].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    while head.startswith(b"<!--"):  # a comment before the page (generators leave them)
        head = head.partition(b"-->")[2].lstrip()
    if head.startswith(_HTML_START[:2]) or (head.startswith(b"<?xml") and b"<html" in head):
        return True
    if name.lower().endswith(_HTML_NAMES):
        return any(tag in head for tag in _HTML_TAGS)
    return False


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """``(encoding, BOM length)`` when ``data`` starts with a Unicode byte-order mark."""
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    return None


def bomless_utf16(data: bytes) -> str | None:
    """Guess UTF-16 without a BOM: mostly-ASCII UTF-16 has a NUL in every other byte."""
    sample = data[: SNIFF_BYTES - SNIFF_BYTES % 2]
    if len(sample) % 2:
        sample = sample[:-1]  # a head cut at an odd length; the whole file is judged again later
    if len(sample) < 4:
        return None
    even_nuls = sample[0::2].count(0) / (len(sample) // 2)
    odd_nuls = sample[1::2].count(0) / (len(sample) // 2)
    if odd_nuls > 0.7 and even_nuls < 0.05:
        return "utf-16-le"
    if even_nuls > 0.7 and odd_nuls < 0.05:
        return "utf-16-be"
    return None


def binary_kind(data: bytes) -> str | None:
    """Describe ``data`` if it looks like a binary (non-text) file, else None.

    Meant for data without a BOM and not UTF-16 (those contain NUL bytes).
    """
    for magic, description in _MAGIC:
        if data.startswith(magic):
            return description
    sample = data[:SNIFF_BYTES]
    if b"\x00" in sample:
        return "a binary file (it contains NUL bytes)"
    controls = sum(1 for byte in sample if byte in _CONTROL)
    if controls > _MAX_CONTROL_SHARE * len(sample):
        return "a binary file (it is full of control characters)"
    return None


def check_head(name: str, head: bytes) -> None:
    """Refuse, from its first bytes, a file that is neither a PDF nor text (InputError)."""
    if is_pdf(head) or is_zip(head):  # a zip is judged once read whole (its directory is at the end)
        return
    if name.lower().endswith(".pdf"):
        raise InputError(
            f"{name}: named .pdf but is not a PDF (no %PDF- header); check the file, "
            "it may be an error page saved by a download"
        )
    if bom_encoding(head) is not None or bomless_utf16(head) is not None:
        return
    kind = binary_kind(head)
    if kind is not None:
        raise InputError(not_readable(name, kind))


def not_readable(name: str, kind: str) -> str:
    """The one-line refusal of a file of a kind freqkv does not read."""
    return f"{name}: this is {kind}, not a document freqkv reads ({READABLE}); convert it to text first"

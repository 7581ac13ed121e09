"""Documents in: open a text file, a PDF, an HTML page, an EPUB, a Word file or standard input,
check it cheaply, yield its text.

``open_document`` does every check that needs no model (missing, empty, binary, encrypted,
image-only, damaged) and raises InputError or UsageError with a one-line message. The text of a
PDF is then extracted page by page while the caller iterates ``Document.pages()``.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from freqkv_cli.documents.document import Document, Page
from freqkv_cli.documents.html_text import html_to_text
from freqkv_cli.documents.joined import join_documents
from freqkv_cli.documents.packages import docx_text, epub_text, open_zip, package_kind
from freqkv_cli.documents.pages import parse_page_range
from freqkv_cli.documents.pdf import open_pdf
from freqkv_cli.documents.sniff import is_html, is_pdf, is_zip, not_readable
from freqkv_cli.documents.text import STDIN_NAME, TextSource, decode_text, read_input
from freqkv_cli.errors import InputError, UsageError

__all__ = ["STDIN_NAME", "Document", "Page", "join_documents", "open_document", "parse_page_range"]


def open_document(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    pages: str | None = None,
    stdin: BinaryIO | None = None,
) -> Document:
    """Open and check ``path`` (``-`` reads ``stdin``, by default the process's standard input).

    A PDF is recognised by its ``%PDF-`` header, not its name. ``password`` opens an encrypted
    PDF; ``pages`` (e.g. ``"3-40"``) selects PDF pages and is a UsageError for text.
    Raises InputError for a document that cannot be read.
    """
    name, data = read_input(path, stdin)
    digest = hashlib.sha256(data).hexdigest()
    if is_pdf(data):
        document = open_pdf(name, data, password=password, pages=pages)
        document.sha256 = digest
        return document
    kind, text, encoding, warnings = _read_as_text(name, data)
    if pages is not None:
        raise UsageError(f"{name}: --pages applies only to PDFs, and this is {_ARTICLES[kind]}; drop --pages")
    return Document(
        name=name,
        kind=kind,
        page_count=None,
        warnings=warnings,
        encoding=encoding,
        sha256=digest,
        _source=TextSource(text),
    )


_ARTICLES = {
    "text": "a text document",
    "html": "an HTML page",
    "epub": "an EPUB book",
    "docx": "a Word document",
}


def _read_as_text(name: str, data: bytes) -> tuple[str, str, str | None, list[str]]:
    """``(kind, text, encoding, warnings)`` of a document that is not a PDF; InputError for a
    damaged one, one of another kind, or one without text (as for PDFs: before any model loads)."""
    if is_zip(data):
        archive = open_zip(name, data)
        kind = package_kind(archive)
        if kind is None:
            raise InputError(not_readable(name, "a zip archive that is neither an EPUB nor a Word document"))
        text = epub_text(name, archive) if kind == "epub" else docx_text(name, data)
        if not text.strip():
            raise InputError(f"{name}: {_ARTICLES[kind]} with no text in it; pass one that has some")
        return kind, text, None, []
    text, encoding, warnings = decode_text(name, data)
    if not is_html(name, data):
        return "text", text, encoding, warnings
    text = html_to_text(text)
    if not text.strip():
        raise InputError(f"{name}: an HTML page with no text in it (only markup or scripts)")
    return "html", text, encoding, warnings

"""Documents in: open a text file, a PDF or standard input, check it cheaply, yield its text.

``open_document`` does every check that needs no model (missing, empty, binary, encrypted,
image-only, damaged) and raises InputError or UsageError with a one-line message. The text of a
PDF is then extracted page by page while the caller iterates ``Document.pages()``.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from freqkv_cli.documents.document import Document, Page
from freqkv_cli.documents.pages import parse_page_range
from freqkv_cli.documents.pdf import open_pdf
from freqkv_cli.documents.sniff import is_pdf
from freqkv_cli.documents.text import STDIN_NAME, TextSource, decode_text, read_input
from freqkv_cli.errors import UsageError

__all__ = ["STDIN_NAME", "Document", "Page", "open_document", "parse_page_range"]


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
    text, encoding, warnings = decode_text(name, data)
    if pages is not None:
        raise UsageError(f"{name}: --pages applies only to PDFs, and this is a text document; drop --pages")
    return Document(
        name=name,
        kind="text",
        page_count=None,
        warnings=warnings,
        encoding=encoding,
        sha256=digest,
        _source=TextSource(text),
    )

"""Several documents read as one, in order: `freqkv qa a.pdf b.html "..."` reads both in one
turn, so the question comes first (kept exact) and sees all of them, as it does one document."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from freqkv_cli.documents.document import Document, Page


def join_documents(documents: list[Document]) -> Document:
    """One document holding ``documents`` in order, each opened by a line naming it. A single
    document is returned as it is. Pages count where every document has pages (PDFs); otherwise
    progress goes by characters."""
    if len(documents) == 1:
        return documents[0]
    counts = [document.page_count for document in documents]
    digests = "".join(document.sha256 or "" for document in documents)
    return Document(
        name=" + ".join(document.name for document in documents),
        kind="joined",
        page_count=None if None in counts else sum(c or 0 for c in counts),
        warnings=[f"{document.name}: {warning}" for document in documents for warning in document.warnings],
        sha256=hashlib.sha256(digests.encode()).hexdigest(),
        parts=[document.name for document in documents],
        _source=_JoinedPages(documents),
    )


def heading(index: int, document: Document) -> str:
    """The line before each document's text: the model is told where one ends and which is which."""
    return f"Document {index}: {document.name}\n\n"


class _JoinedPages:
    def __init__(self, documents: list[Document]) -> None:
        self._documents = documents

    def iter_pages(self, warnings: list[str]) -> Iterator[Page]:
        number = 0
        for index, document in enumerate(self._documents, start=1):
            known = len(document.warnings)
            first = True
            for page in document.pages():
                number += 1
                text = heading(index, document) + page.text if first else page.text
                first = False
                yield Page(number, text)
            # what went wrong inside it (an unreadable page), said with its name
            warnings.extend(f"{document.name}: {warning}" for warning in document.warnings[known:])

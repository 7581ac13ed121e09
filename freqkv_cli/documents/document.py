"""The document types the rest of freqkv consumes: a Document yields Pages of text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Page:
    """One page of text; ``number`` is 1-based and refers to the original PDF page."""

    number: int
    text: str


class PageSource(Protocol):
    """Where a Document's pages come from (plain text, or a PDF extracted lazily)."""

    def iter_pages(self, warnings: list[str]) -> Iterator[Page]: ...


@dataclass
class Document:
    """An opened, checked document whose text is produced on demand.

    ``page_count`` is the number of selected PDF pages (None for text);
    ``total_pages`` is the page count of the whole PDF (None for text);
    ``encoding`` is how a text document was decoded (None for PDFs).
    """

    name: str
    kind: str  # "pdf", "text", "html", "epub" or "docx" (all but PDFs are read whole, as one page)
    page_count: int | None
    warnings: list[str] = field(default_factory=list)
    total_pages: int | None = None
    encoding: str | None = None
    sha256: str | None = None  # of the bytes read (a memory file records which document it holds)
    parts: list[str] = field(default_factory=list)  # the names of the documents joined in this one
    _source: PageSource | None = field(default=None, repr=False, compare=False)

    def pages(self) -> Iterator[Page]:
        """Yield pages in order; a PDF page is extracted only when the caller asks for it.

        Unreadable PDF pages are skipped with a message added to ``warnings``.
        Raises InputError at the end if no selected page had any text.
        """
        if self._source is None:
            return iter(())
        return self._source.iter_pages(self.warnings)

    def text(self) -> str:
        """All page texts joined by newlines (extracts every selected page)."""
        return "\n".join(page.text for page in self.pages() if page.text)

"""The input group: the documents a command reads, and which pages of a PDF with which password."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from ...documents import Document, open_document
from .flags import INPUT_PANEL, option
from .taking import Options

PathArg = Annotated[
    str, typer.Argument(help="A PDF, a text file, or - for standard input.", show_default=False)
]
DOCUMENT_KINDS = "text, Markdown, PDF, HTML, EPUB or DOCX"
PathsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH...",
        help=f"Documents ({DOCUMENT_KINDS}), read in order into one session; - reads standard input.",
        show_default=False,
    ),
]


PagesOpt = Annotated[
    str | None,
    option(
        "--pages",
        metavar="RANGE",
        panel=INPUT_PANEL,
        show_default="all",
        help="PDF pages to read, e.g. 3-40 or 1,4-6.",
    ),
]
PasswordOpt = Annotated[
    str | None,
    option(
        "--password",
        metavar="TEXT",
        envvar="FREQKV_PDF_PASSWORD",
        panel=INPUT_PANEL,
        show_default="none",
        help="Password of an encrypted PDF.",
    ),
]


@dataclass
class InputChoice:
    """Which pages of a PDF, and its password."""

    pages: PagesOpt = None
    password: PasswordOpt = None

    def open(self, path: str) -> Document:
        return open_document(path, password=self.password, pages=self.pages)


INPUT = Options(InputChoice)

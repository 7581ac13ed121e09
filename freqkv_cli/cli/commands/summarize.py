"""`freqkv summarize PATH...`: stream whole documents, then write their summary."""

from __future__ import annotations

from typing import Any

from .. import options as o
from ..running import DOCUMENT_TASK, run_document_task


@o.takes(**DOCUMENT_TASK)
def summarize(paths: o.PathsArg, save: o.SaveOpt = None, **groups: Any) -> None:
    """Summarize documents of any length: the whole text streams through the compressed cache.

    Several documents are read in order, as one. PATH may also be a memory file kept by
    `freqkv read` or --save.

    Examples:

      freqkv summarize book.pdf

      freqkv summarize chapter1.html chapter2.html notes.docx

      pdftotext report.pdf - | freqkv summarize -

      freqkv summarize notes.md --window 2k --json | jq -r .answer

      freqkv summarize book.fkv
    """
    run_document_task(paths, task="summarize", save=save, **groups)

"""`freqkv summarize PATH|-`: stream a whole document, then write its summary."""

from __future__ import annotations

from typing import Any

from .. import options as o
from ..running import DOCUMENT_TASK, run_document_task


@o.takes(**DOCUMENT_TASK)
def summarize(path: o.PathArg, save: o.SaveOpt = None, **groups: Any) -> None:
    """Summarize a document of any length: the whole text streams through the compressed cache.

    Examples:

      freqkv summarize book.pdf

      pdftotext report.pdf - | freqkv summarize -

      freqkv summarize notes.md --window 2k --json | jq -r .answer

      freqkv summarize book.fkv                 # a memory kept by `freqkv read`
    """
    run_document_task(path, task="summarize", save=save, **groups)

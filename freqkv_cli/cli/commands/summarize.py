"""`freqkv summarize PATH|-`: stream a whole document, then write its summary."""

from __future__ import annotations

from .. import options as o
from ..running import run_document_task


@o.takes(model=o.MODEL, cache=o.CACHE, answering=o.ANSWER, source=o.INPUT, output=o.OUTPUT)
def summarize(
    path: o.PathArg,
    model: o.ModelChoice,
    cache: o.CacheChoice,
    answering: o.AnswerChoice,
    source: o.InputChoice,
    output: o.OutputChoice,
) -> None:
    """Summarize a document of any length: the whole text streams through the compressed cache.

    Examples:

      freqkv summarize book.pdf

      pdftotext report.pdf - | freqkv summarize -

      freqkv summarize notes.md --window 2k --json | jq -r .answer
    """
    run_document_task(
        path, task="summarize", model=model, cache=cache, answering=answering, source=source, output=output
    )

"""`freqkv qa PATH|- QUESTION`: answer a question about a document."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ...errors import UsageError
from .. import options as o
from ..running import DOCUMENT_TASK, run_document_task


@o.takes(
    **DOCUMENT_TASK
    | {
        "cache": o.Options(o.CacheChoice).without("select").defaults(reread=8),
        "answering": o.ANSWER.defaults(max_new_tokens=200),
    }
)
def qa(
    path: o.PathArg,
    question: Annotated[str, typer.Argument(help="The question.", show_default=False)],
    save: o.SaveOpt = None,
    **groups: Any,
) -> None:
    """Answer a question about a document.

    The question goes before the document (kept exact through every compression) and
    again after it. With the hybrid cache, the question chooses which passages stay exact,
    and the best of them (--reread) are quoted again just before the question.

    PATH may be a memory file kept by `freqkv read` or --save: nothing is read again, and
    the passages quoted before the question are recalled from it (--recall).

    Examples:

      freqkv qa report.pdf "Who signed it?"

      freqkv qa report.pdf "Who signed it?" --json | jq -r .answer

      cat log.txt | freqkv qa - "Which service failed first?"

      freqkv qa book.pdf "Who is the narrator?" --save book.fkv

      freqkv qa book.fkv "Where does he go first?"
    """
    if not question.strip():
        raise UsageError("the question is empty")
    run_document_task(path, task="qa", question=question.strip(), save=save, **groups)

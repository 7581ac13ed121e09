"""`freqkv qa PATH... QUESTION`: answer a question about documents."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ...errors import UsageError
from .. import options as o
from ..running import DOCUMENT_TASK, run_document_task

InputsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH... QUESTION",
        help=f"Documents ({o.DOCUMENT_KINDS}), then the question, last. - as a document reads "
        "standard input; - as the question reads the question from it.",
        show_default=False,
    ),
]


@o.takes(
    **DOCUMENT_TASK
    | {
        "cache": o.Options(o.CacheChoice).without("select").defaults(reread=8),
        "answering": o.ANSWER.defaults(max_new_tokens=200),
    }
)
def qa(inputs: InputsArg, save: o.SaveOpt = None, **groups: Any) -> None:
    """Answer a question about documents.

    The question goes before the documents (kept exact through every compression) and again
    after them. With the hybrid cache, the question chooses which passages stay exact, and the
    best of them (--reread) are quoted again just before the question. Several documents are
    read in order, as one.

    PATH may be a memory file kept by `freqkv read` or --save: nothing is read again, and the
    passages quoted before the question are recalled from it (--recall).

    Examples:

      freqkv qa report.pdf "Who signed it?"

      freqkv qa report.pdf annex.docx "Who signed it?" --json | jq -r .answer

      cat log.txt | freqkv qa - "Which service failed first?"

      echo "Who signed it?" | freqkv qa report.pdf -

      freqkv qa book.pdf "Who is the narrator?" --save book.fkv

      freqkv qa book.fkv "Where does he go first?"
    """
    paths, question = split_question(inputs)
    run_document_task(paths, task="qa", question=question, save=save, **groups)


def split_question(inputs: list[str]) -> tuple[list[str], str]:
    """``(document paths, question)`` from qa's arguments: the question is the last one; ``-``
    reads it from standard input (which then cannot also be a document)."""
    if len(inputs) < 2:
        raise UsageError("qa takes one or more documents, then the question: freqkv qa PATH... QUESTION")
    *paths, question = inputs
    if question == "-":
        if "-" in paths:
            raise UsageError("the document and the question cannot both come from standard input (-)")
        question = read_question_from_stdin()
    if not question.strip():
        raise UsageError("the question is empty")
    return paths, question.strip()


def read_question_from_stdin() -> str:
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        raise UsageError("the question is - but nothing is piped in: e.g. echo 'Who?' | freqkv qa doc.txt -")
    try:
        text = stdin.read()
    except UnicodeDecodeError:
        raise UsageError("the question on standard input is not UTF-8 text") from None
    if not text.strip():
        raise UsageError("the question on standard input is empty")
    return text

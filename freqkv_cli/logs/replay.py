"""Going on from a logged conversation: its documents read again, its turns fed again.

The log keeps text, not the cache, so a conversation is restored by replaying it into a fresh
session: each document is read again if its file still exists with the same sha256, then each
exchange's prompt and answer are fed as they were (nothing is generated).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..documents import open_document
from ..errors import FreqKVError
from ..session.prompts import SUMMARIZE_REMINDER
from .store import Conversation, DocumentEntry

if TYPE_CHECKING:  # `freqkv logs` reads the log without torch
    from ..session.reading import ReadReport
    from ..session.session import Session


@dataclass
class Restored:
    """What a replay put back, and what it could not."""

    documents: list[str] = field(default_factory=list)  # read again
    missing: list[str] = field(default_factory=list)  # "name (why)"
    exchanges: int = 0

    def summary(self) -> str:
        parts = [f"{self.exchanges} exchange{'s' * (self.exchanges != 1)}"]
        if self.documents:
            parts.append("read again: " + ", ".join(self.documents))
        if self.missing:
            parts.append("not restored: " + ", ".join(self.missing))
        return "; ".join(parts)


def replay(
    conversation: Conversation,
    session: Session,
    *,
    read: Callable[[Session, object, str, str | None], ReadReport] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Restored:
    """Feed ``conversation`` into ``session`` (fresh, same model). ``read(session, document,
    task, question)`` reads a document (default: ``session.read_document``), e.g. with progress."""
    restored = Restored()

    def read_document(document: object, task: str, question: str | None) -> None:
        if read is not None:
            read(session, document, task, question)
        else:
            session.read_document(document, task=task, question=question, should_stop=should_stop)  # type: ignore[arg-type]

    for index, exchange in enumerate(conversation.exchanges):
        opened_turn = False
        for entry in (d for d in conversation.documents if d.position == index):
            document, why = _reopen(entry)
            if document is None:
                restored.missing.append(f"{entry.name} ({why})")
                continue
            question = exchange.prompt if entry.task == "qa" else None
            read_document(document, entry.task, question)
            restored.documents.append(entry.name)
            opened_turn = opened_turn or entry.task in ("qa", "summarize")
        if not opened_turn:  # a chat turn, or a task whose document is gone: the prompt as a turn
            session.add_user_turn(exchange.prompt or SUMMARIZE_REMINDER, should_stop=should_stop)
        session.add_answer(exchange.answer, should_stop=should_stop)
        restored.exchanges += 1
    return restored


def _reopen(entry: DocumentEntry) -> tuple[object | None, str]:
    """The document's file opened again, or None and why not."""
    if entry.path is None:
        return None, "it was standard input"
    path = Path(entry.path)
    try:
        data = path.read_bytes()
    except OSError:
        return None, f"{entry.path} is gone"
    if entry.sha256 is not None and hashlib.sha256(data).hexdigest() != entry.sha256:
        return None, f"{entry.path} has changed"
    try:
        return open_document(path), ""
    except FreqKVError as exc:
        return None, str(exc)

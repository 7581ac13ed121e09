"""The one call summarize and qa make to log their exchange (chat keeps its own ConversationLog)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..logs import ConversationLog, logging_wanted
from .options import AnswerChoice

if TYPE_CHECKING:
    from ..session.session import Session


def answer_options(answering: AnswerChoice) -> dict[str, Any]:
    """How an answer was asked for, as the log keeps it."""
    return vars(answering.answering())


def log_exchange(
    task: str,
    session: Session,
    question: str | None,
    result: Any,
    tokens_in: int,
    seconds: float,
    answering: AnswerChoice,
    no_log: bool,
) -> None:
    """Log one summarize or qa run as a conversation of one exchange (never raises)."""
    if not logging_wanted(no_log):
        return
    ConversationLog(task).record(
        session,
        question,
        result.text,
        tokens_in=tokens_in,
        tokens_out=result.tokens_out,
        stop_reason=result.stop_reason,
        seconds=seconds,
        options=answer_options(answering),
    )

"""Logging a conversation as it happens, without ever losing an answer to the log.

``ConversationLog.record`` is called after an answer was given; anything wrong with the log
file (damaged, locked, unwritable, newer) becomes one warning, once, and logging stops for the
rest of the process. ``FREQKV_NO_LOG=1`` turns it off.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models.default import freqkv_home
from .store import LOG_FILE, DocumentEntry, Exchange, LogError, LogStore

if TYPE_CHECKING:  # `freqkv logs` reads the log without torch
    from ..session.session import Session

NO_LOG_ENV = "FREQKV_NO_LOG"
log = logging.getLogger("freqkv_cli")


def log_path() -> Path:
    return freqkv_home() / LOG_FILE


def logging_wanted(no_log: bool = False) -> bool:
    """False with ``no_log`` (--no-log) or FREQKV_NO_LOG set to anything but 0 or empty."""
    return not no_log and os.environ.get(NO_LOG_ENV, "") in ("", "0")


class ConversationLog:
    """The log of one conversation: ``conversation_id`` None until its first exchange is kept
    (or the id of a logged conversation to go on with)."""

    def __init__(
        self,
        command: str,
        *,
        enabled: bool = True,
        conversation_id: int | None = None,
        store: LogStore | None = None,
    ) -> None:
        self.command = command
        self.enabled = enabled
        self.conversation_id = conversation_id
        self.store = store or LogStore(log_path())
        self._documents_logged = 0  # of the session's documents
        self._exchanges = 0

    def follow(self, session: Session, exchanges: int) -> None:
        """The session now holds what the log does (a replayed conversation): only what comes
        after is new."""
        self._documents_logged = len(session.documents)
        self._exchanges = exchanges

    def restart(self) -> None:
        """What follows is a new conversation (after /clear, /reset, /load): the next exchange
        opens one, with the session's documents."""
        self.conversation_id = None
        self._documents_logged = 0
        self._exchanges = 0

    def record(
        self,
        session: Session,
        prompt: str | None,
        answer: str,
        *,
        tokens_in: int,
        tokens_out: int,
        stop_reason: str,
        seconds: float,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Keep one exchange and the documents read since the last one. Never raises."""
        if not self.enabled:
            return
        tasks = {"chat": "read"}
        documents = [
            DocumentEntry(
                position=self._exchanges,
                name=str(d["name"]),
                path=_file_path(str(d["name"])),
                sha256=d.get("sha256"),
                pages=d.get("pages"),
                tokens=int(d["tokens"]),
                task=tasks.get(self.command, self.command),
            )
            for d in session.documents[self._documents_logged :]
        ]
        policy = session.policy
        settings = {
            "cache": policy.kind,
            "window": policy.window,
            "sink": policy.sink,
            "recent": policy.recent,
            "ratio": policy.ratio,
            "exact": policy.exact,
            "ctx": session.ctx,
            "system": session.system,
        }
        exchange = Exchange(
            at=time.time(),
            prompt=prompt,
            answer=answer,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            stop_reason=stop_reason,
            seconds=round(seconds, 3),
            options=dict(options or {}),
        )
        try:
            self.conversation_id = self.store.add_exchange(
                self.conversation_id,
                command=self.command,
                model=session.loaded.name,
                settings=settings,
                documents=documents,
                exchange=exchange,
            )
        except LogError as exc:
            self.enabled = False  # one warning, not one per answer
            log.warning("%s; the answer was given but not logged (FREQKV_NO_LOG=1 turns logging off)", exc)
            return
        self._documents_logged = len(session.documents)
        self._exchanges += 1


def _file_path(name: str) -> str | None:
    path = Path(name)
    return str(path.resolve()) if path.is_file() else None

"""The conversation log's SQLite file: its schema, one transaction per exchange, reading it back.

One file, ``FREQKV_HOME/logs.db``. A conversation has its documents (by sha256 of the file's
bytes) and its exchanges (prompt, answer, tokens, timings), in the order they happened: a
document's ``position`` is the number of exchanges before it was read. The schema's version
is kept in ``PRAGMA user_version``; a file from a newer freqkv is refused, not altered.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
LOG_FILE = "logs.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,        -- unix time of the first exchange
    command TEXT NOT NULL,        -- chat, qa, summarize
    model TEXT NOT NULL,
    settings TEXT NOT NULL        -- JSON: the cache policy in force, ctx, system prompt
);
CREATE TABLE IF NOT EXISTS documents (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    position INTEGER NOT NULL,    -- exchanges logged before it was read
    name TEXT NOT NULL,
    path TEXT,                    -- absolute path when it was a file (NULL: standard input)
    sha256 TEXT,
    pages INTEGER,
    tokens INTEGER NOT NULL,
    task TEXT NOT NULL            -- read, qa, summarize: how it was read
);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    at REAL NOT NULL,
    prompt TEXT,                  -- NULL for summarize
    answer TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    stop_reason TEXT NOT NULL,
    seconds REAL NOT NULL,        -- the whole exchange, reading included
    options TEXT NOT NULL         -- JSON: temperature, max_new_tokens, ...
);
CREATE INDEX IF NOT EXISTS exchanges_by_conversation ON exchanges(conversation_id, id);
"""


class LogError(Exception):
    """The log cannot be written or read (damaged, locked, newer, unwritable)."""


@dataclass
class DocumentEntry:
    position: int
    name: str
    path: str | None
    sha256: str | None
    pages: int | None
    tokens: int
    task: str


@dataclass
class Exchange:
    at: float
    prompt: str | None
    answer: str
    tokens_in: int
    tokens_out: int
    stop_reason: str
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    id: int
    started: float
    command: str
    model: str
    settings: dict[str, Any]
    documents: list[DocumentEntry] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started": _iso(self.started),
            "command": self.command,
            "model": self.model,
            "settings": self.settings,
            "documents": [vars(d) for d in self.documents],
            "exchanges": [{**vars(e), "at": _iso(e.at)} for e in self.exchanges],
        }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


class LogStore:
    """The log file at ``path``; every call opens, works in one transaction, and closes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.exists():
                raise LogError(f"no conversations logged yet ({self.path} does not exist)")
            connection = sqlite3.connect(self.path, timeout=2.0)  # a second writer waits, briefly
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                connection.close()
                raise LogError(f"{self.path} was written by a newer freqkv (log schema {version})")
            if version < SCHEMA_VERSION and create:
                with connection:
                    connection.executescript(_SCHEMA)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return connection
        except (sqlite3.Error, OSError) as exc:
            raise LogError(f"the conversation log {self.path} cannot be used: {exc}") from None

    @contextmanager
    def _open(self, *, create: bool, doing: str) -> Iterator[sqlite3.Connection]:
        """A connection for one call, closed after it; its errors say the log cannot be ``doing``."""
        connection = self._connect(create=create)
        try:
            yield connection
        except sqlite3.Error as exc:
            raise LogError(f"the conversation log {self.path} cannot be {doing}: {exc}") from None
        finally:
            connection.close()

    def add_exchange(
        self,
        conversation_id: int | None,
        *,
        command: str,
        model: str,
        settings: dict[str, Any],
        documents: list[DocumentEntry],
        exchange: Exchange,
    ) -> int:
        """Log one exchange and the documents read before it, all or nothing; a new conversation
        when ``conversation_id`` is None. Returns the conversation's id."""
        # The connection's own with: one transaction, a crash leaves the exchange wholly in or out.
        with self._open(create=True, doing="written") as connection, connection:
            if conversation_id is None:
                cursor = connection.execute(
                    "INSERT INTO conversations (started, command, model, settings) VALUES (?, ?, ?, ?)",
                    (exchange.at, command, model, json.dumps(settings)),
                )
                conversation_id = int(cursor.lastrowid)  # type: ignore[arg-type]
            connection.executemany(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (conversation_id, d.position, d.name, d.path, d.sha256, d.pages, d.tokens, d.task)
                    for d in documents
                ],
            )
            e = exchange
            connection.execute(
                "INSERT INTO exchanges (conversation_id, at, prompt, answer, tokens_in, tokens_out, "
                "stop_reason, seconds, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    e.at,
                    e.prompt,
                    e.answer,
                    e.tokens_in,
                    e.tokens_out,
                    e.stop_reason,
                    e.seconds,
                    json.dumps(e.options),
                ),
            )
        return conversation_id

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` latest conversations, newest first: id, start, command, model, counts,
        the first prompt."""
        with self._open(create=False, doing="read") as connection:
            rows = connection.execute(
                "SELECT c.id, c.started, c.command, c.model, "
                "(SELECT COUNT(*) FROM exchanges e WHERE e.conversation_id = c.id), "
                "(SELECT group_concat(name, ', ') FROM documents d WHERE d.conversation_id = c.id), "
                "(SELECT prompt FROM exchanges e WHERE e.conversation_id = c.id ORDER BY e.id LIMIT 1) "
                "FROM conversations c ORDER BY c.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("id", "started", "command", "model", "exchanges", "documents", "first_prompt")
        return [{**dict(zip(keys, row, strict=True)), "started": _iso(row[1])} for row in rows]

    def last_id(self) -> int | None:
        found = self.recent(1)
        return int(found[0]["id"]) if found else None

    def conversation(self, conversation_id: int) -> Conversation:
        """One conversation, whole; LogError if there is none with this id."""
        with self._open(create=False, doing="read") as connection:
            row = connection.execute(
                "SELECT id, started, command, model, settings FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                raise LogError(f"no conversation {conversation_id} in the log (freqkv logs lists them)")
            documents = connection.execute(
                "SELECT position, name, path, sha256, pages, tokens, task FROM documents "
                "WHERE conversation_id = ? ORDER BY rowid",
                (conversation_id,),
            ).fetchall()
            exchanges = connection.execute(
                "SELECT at, prompt, answer, tokens_in, tokens_out, stop_reason, seconds, options "
                "FROM exchanges WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return Conversation(
            id=row[0],
            started=row[1],
            command=row[2],
            model=row[3],
            settings=json.loads(row[4]),
            documents=[DocumentEntry(*d) for d in documents],
            exchanges=[Exchange(*e[:7], options=json.loads(e[7])) for e in exchanges],
        )

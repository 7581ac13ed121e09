"""Conversation logs: every exchange of chat, qa and summarize kept in SQLite under FREQKV_HOME.

``ConversationLog`` records (never losing an answer to a broken log), ``LogStore`` reads and
writes the file, ``replay`` goes on from a logged conversation in a fresh session.
"""

from .recorder import NO_LOG_ENV, ConversationLog, log_path, logging_wanted
from .replay import Restored, replay
from .store import SCHEMA_VERSION, Conversation, LogError, LogStore

__all__ = [
    "NO_LOG_ENV",
    "SCHEMA_VERSION",
    "Conversation",
    "ConversationLog",
    "LogError",
    "LogStore",
    "Restored",
    "log_path",
    "logging_wanted",
    "replay",
]

"""The chat's /commands, as ollama users type them: /set, /clear, /reset, /read, /save, /load ..."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import Chat
from ..errors import FreqKVError, Interrupted, UsageError
from ..logs import ConversationLog
from ..session.prompts import turn_template
from .messages import as_flags
from .options import InputChoice
from .output import Readout
from .running import StopFlag, check_writable, keep_memory, read_into

HELP_TEXT = (
    "commands: /read FILE [--pages 1-3] · /save FILE.fkv · /load FILE.fkv · /stats · "
    "/set temperature|max-tokens|top-p|seed|system|stats VALUE · /clear (the conversation) · "
    '/reset (documents too) · /bye, /exit or Ctrl-D · /? · """ starts and ends several lines · '
    "Ctrl-C stops an answer"
)
EXIT = "exit"


@dataclass
class ChatContext:
    """What the commands act on: the conversation, where messages go, how documents open."""

    chat: Chat
    readout: Readout
    stop: StopFlag
    source: InputChoice
    log: ConversationLog
    stats: bool  # the readout line after each answer


def run_command(text: str, context: ChatContext) -> str | None:
    """Carry out a /command; returns :data:`EXIT` to leave the chat."""
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    handler = _COMMANDS.get(name)
    if handler is None:
        context.readout.warn(f"unknown command {name}: {HELP_TEXT}")
        return None
    try:
        return handler(argument, context)
    except FreqKVError as exc:  # a bad file or value must not end the chat
        context.readout.warn(as_flags(str(exc)))
        return None


def _exit(argument: str, context: ChatContext) -> str:
    return EXIT


def _help(argument: str, context: ChatContext) -> None:
    context.readout.info(HELP_TEXT)


def _stats(argument: str, context: ChatContext) -> None:
    sys.stderr.write(context.readout.memory_line(context.chat.session) + "\n")


def _names(session: Any) -> str:
    return ", ".join(Path(str(d["name"])).name for d in session.documents)


def _clear(argument: str, context: ChatContext) -> None:
    session = context.chat.session
    turns = session.turns - len(session.documents)
    with context.stop.armed():
        again = context.chat.clear()
    context.log.restart()  # what follows is another conversation, about the same documents
    dropped = f"{turns} turn{'s' * (turns != 1)} dropped"
    if not session.documents:
        context.readout.info(f"(conversation cleared: {dropped}; no documents were read)")
        return
    note = f", {again} of them read again from their tokens" if again else ""
    context.readout.info(f"(conversation cleared: {dropped}; documents kept: {_names(session)}{note})")


def _reset(argument: str, context: ChatContext) -> None:
    session = context.chat.session
    names = _names(session)
    context.chat.reset()
    context.log.restart()
    dropped = f"documents {names} and the conversation" if names else "the conversation (no documents)"
    context.readout.info(f"(everything cleared: {dropped}; the model and settings stay)")


def _read(argument: str, context: ChatContext) -> None:
    words = shlex.split(argument)
    pages = _flag_value(words, "--pages")
    password = _flag_value(words, "--password")
    if len(words) != 1:
        raise UsageError("usage: /read FILE [--pages 1-3] [--password P] (quote a name with spaces)")
    source = InputChoice(pages=pages or context.source.pages, password=password or context.source.password)
    document = source.open(str(Path(words[0]).expanduser()))
    try:
        with context.stop.armed():
            report = read_into(context.chat.session, document, context.readout, context.stop, task="read")
    except Interrupted:
        context.readout.warn("reading stopped; the part already read stays in the conversation")
        return
    context.readout.info(f"(read {report.tokens:,} tokens of {document.name})")


def _flag_value(words: list[str], flag: str) -> str | None:
    """Take ``flag VALUE`` (or ``flag=VALUE``) out of ``words``; its value, or None."""
    for index, word in enumerate(words):
        if word == flag:
            if index + 1 >= len(words):
                raise UsageError(f"{flag} needs a value")
            value = words[index + 1]
            del words[index : index + 2]
            return value
        if word.startswith(flag + "="):
            del words[index]
            return word.split("=", 1)[1]
    return None


def _save(argument: str, context: ChatContext) -> None:
    if not argument:
        raise UsageError("usage: /save FILE.fkv")
    target = str(Path(argument).expanduser())
    check_writable(target)
    keep_memory(context.chat.session, target, context.readout)


def _load(argument: str, context: ChatContext) -> None:
    from ..memory.saved import load_session  # torch: imported when a chat loads, not for --help

    if not argument:
        raise UsageError("usage: /load FILE.fkv")
    target = str(Path(argument).expanduser())
    session = context.chat.session
    restored = load_session(
        session.loaded, target, ctx=session.ctx, max_chunk=session.engine.max_chunk
    ).session
    if restored.open_task is not None:
        restored.finish_document(restored.open_task)
    context.chat.session = restored
    context.log.restart()
    context.readout.info(f"(went on from {target}: {restored.tokens_held:,} tokens held)")


# /set NAME VALUE: name -> (the Answering field, how the value is read)
_SETTINGS = {
    "temperature": ("temperature", float),
    "max-tokens": ("max_new_tokens", int),
    "max-new-tokens": ("max_new_tokens", int),
    "num_predict": ("max_new_tokens", int),  # ollama's name
    "top-p": ("top_p", float),
    "seed": ("seed", int),
    "repetition-penalty": ("repetition_penalty", float),
}


def _set(argument: str, context: ChatContext) -> None:
    name, _, value = argument.partition(" ")
    value = value.strip()
    answering = context.chat.answering
    if not name:
        canonical = ("temperature", "max-tokens", "top-p", "seed", "repetition-penalty")
        shown = " · ".join(f"{key} {getattr(answering, _SETTINGS[key][0])}" for key in canonical)
        system = context.chat.session.system
        context.readout.info(f"({shown} · system {system!r} · stats {'on' if context.stats else 'off'})")
        return
    if name == "stats":
        if value not in ("on", "off"):
            raise UsageError("usage: /set stats on|off")
        context.stats = value == "on"
        context.readout.info(f"(stats {value})")
        return
    if name == "system":
        _set_system(value, context)
        return
    if name not in _SETTINGS:
        raise UsageError(
            f"/set {name}: not a setting; use one of {', '.join([*_SETTINGS, 'system', 'stats'])}"
        )
    field, kind = _SETTINGS[name]
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(
            f"/set {name} needs a {'whole ' if kind is int else ''}number, not {value!r}"
        ) from None
    low = {"max_new_tokens": 1, "temperature": 0, "top_p": 1e-9, "seed": 0, "repetition_penalty": 1}[field]
    if number < low or (field == "top_p" and number > 1):
        raise UsageError(f"/set {name} {value}: out of range")
    setattr(answering, field, number)
    context.readout.info(f"({name} {number})")


def _set_system(value: str, context: ChatContext) -> None:
    words = shlex.split(value) if value else []
    system = " ".join(words) or None
    session = context.chat.session
    session.system = system
    session.template = turn_template(session.tokenizer, system)
    said = f"system prompt {system!r}" if system else "no system prompt"
    if session.turns == 0:
        context.readout.info(f"({said})")
    else:  # the system prompt opens the conversation, which has begun
        context.readout.info(f"({said}: it opens the next conversation, after /reset)")


_COMMANDS = {
    "/exit": _exit,
    "/quit": _exit,
    "/bye": _exit,
    "/help": _help,
    "/?": _help,
    "/stats": _stats,
    "/clear": _clear,
    "/reset": _reset,
    "/read": _read,
    "/save": _save,
    "/load": _load,
    "/set": _set,
}

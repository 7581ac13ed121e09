"""`freqkv chat [PATH ...]`: an interactive conversation whose history lives in the compressed cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ...errors import ContextLimitError, FreqKVError, Interrupted, UsageError
from ...memory.file_format import is_memory_file
from ...memory.saved import load_session
from ...models.default import freqkv_home
from ...session.session import Session
from .. import options as o
from ..output import Readout
from ..running import (
    StopFlag,
    answer,
    check_writable,
    keep_memory,
    make_session,
    read_into,
    refuse_cache_flags,
)

HELP_TEXT = (
    "commands: /read FILE · /save FILE.fkv · /load FILE.fkv · /stats · /reset · /exit (or Ctrl-D) · "
    "Ctrl-C stops an answer"
)


def _enable_line_editing() -> None:
    """Arrow keys and a persistent history for input() in a terminal."""
    try:
        import atexit
        import readline
    except ImportError:  # Windows without pyreadline: plain input
        return
    history = freqkv_home() / "chat_history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
        readline.set_history_length(1000)
        atexit.register(readline.write_history_file, history)
    except OSError:
        pass


@o.takes(
    model=o.MODEL,
    cache=o.CACHE,
    answering=o.ANSWER.defaults(max_new_tokens=512),
    source=o.INPUT.only("password"),
    output=o.OUTPUT.without("as_json"),
)
def chat(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Documents to read before the conversation.", show_default=False),
    ] = None,
    *,
    model: o.ModelChoice,
    cache: o.CacheChoice,
    answering: o.AnswerChoice,
    source: o.InputChoice,
    output: o.OutputChoice,
) -> None:
    """Chat with the model, optionally about documents read first.

    The whole conversation stays in the compressed cache, so it can run far past the
    model's window.

    In the chat: /read FILE reads another document, /save FILE.fkv keeps the whole
    conversation (documents and history) and /load FILE.fkv goes on from one, /stats shows
    memory, /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer and returns
    to the prompt. With standard input not a terminal, each input line is one turn. A memory
    file (from `freqkv read` or /save) given first goes on where it stopped.

    Examples:

      freqkv chat --ctx 32k

      freqkv chat book.pdf --window 2k

      printf 'Who is the narrator?\\nWhere does he go?\\n' | freqkv chat samples/botchan.txt

      freqkv chat book.fkv
    """
    cache.settings.check()
    readout = output.readout
    paths = list(paths or [])
    memory = paths.pop(0) if paths and is_memory_file(paths[0]) else None
    if any(is_memory_file(path) for path in paths):
        raise UsageError("a saved memory (.fkv) can only come first: it is the conversation to go on with")
    if memory is not None:
        refuse_cache_flags(cache, memory)
    documents = [source.open(path) for path in paths]  # fail before loading
    loaded = model.load(readout)
    if memory is not None:
        session = load_session(loaded, memory, ctx=cache.ctx_tokens).session
        if session.open_task is not None:  # read by `freqkv read`: the document's turn ends here
            session.finish_document(session.open_task)
    else:
        session = make_session(loaded, cache, answering.system)
    stop = StopFlag()
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    for document in documents:
        with stop.armed():
            read_into(session, document, readout, stop, task="read")
        if stop():
            raise Interrupted("interrupted while reading")
    if interactive:
        policy = session.policy
        room = "no limit" if session.ctx is None else f"up to {session.ctx:,} tokens"
        held = "full cache" if policy.kind == "full" else f"a {policy.window:,}-entry {policy.kind} window"
        readout.info(f"freqkv chat · {loaded.name} · {room} in {held} · {HELP_TEXT}")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                sys.stderr.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as shells do
            sys.stderr.write("\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            outcome = _command(text, session, readout, stop, source)
            if outcome == "exit":
                return
            if isinstance(outcome, Session):  # /load: the conversation goes on from the file
                session = outcome
            continue
        try:
            with stop.armed():
                session.add_user_turn(text, should_stop=stop)
                result = answer(session, answering, stop, stream=True)
        except ContextLimitError as exc:
            readout.warn(_as_flags(str(exc)))
            continue
        if result.stop_reason == "interrupted":
            readout.info("(answer stopped)")
        elif result.stop_reason == "max_new_tokens":
            readout.info(f"(answer cut at --max-new-tokens {answering.max_new_tokens})")


def _command(
    text: str, session: Session, readout: Readout, stop: StopFlag, source: o.InputChoice
) -> str | Session | None:
    """Carry out a /command: ``"exit"``, a session to go on with (/load), or None."""
    name, _, argument = text.partition(" ")
    if name in ("/exit", "/quit"):
        return "exit"
    if name == "/reset":
        session.reset()
        readout.info("(conversation cleared)")
    elif name == "/stats":
        sys.stderr.write(readout.memory_line(session) + "\n")
    elif name == "/read":
        if not argument.strip():
            readout.warn("usage: /read FILE")
            return None
        try:
            document = source.open(str(Path(argument.strip()).expanduser()))
            with stop.armed():
                report = read_into(session, document, readout, stop, task="read")
            readout.info(f"(read {report.tokens:,} tokens of {document.name})")
        except Interrupted:
            readout.warn("reading stopped; the part already read stays in the conversation")
        except FreqKVError as exc:  # a bad file must not end the chat
            readout.warn(_as_flags(str(exc)))
    elif name in ("/save", "/load"):
        if not argument.strip():
            readout.warn(f"usage: {name} FILE.fkv")
            return None
        target = str(Path(argument.strip()).expanduser())
        try:
            if name == "/save":
                check_writable(target)
                keep_memory(session, target, readout)
            else:
                restored = load_session(session.loaded, target, ctx=session.ctx).session
                if restored.open_task is not None:
                    restored.finish_document(restored.open_task)
                readout.info(f"(went on from {target}: {restored.tokens_held:,} tokens held)")
                return restored
        except FreqKVError as exc:  # a bad file must not end the chat
            readout.warn(_as_flags(str(exc)))
    elif name == "/help":
        readout.info(HELP_TEXT)
    else:
        readout.warn(f"unknown command {name}: {HELP_TEXT}")
    return None


def _as_flags(message: str) -> str:
    """A library message with parameter names written as this program's flags (app.as_flags;
    imported here, when needed: the app imports this module)."""
    from ..app import as_flags

    return as_flags(message)

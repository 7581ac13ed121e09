"""`freqkv chat [PATH ...]`: an interactive conversation whose history lives in the compressed cache."""

from __future__ import annotations

import shutil
import sys
from typing import Annotated

import typer

from ...api import Chat, Model, Reply
from ...errors import ContextLimitError, Interrupted, UsageError
from ...logs import Conversation, ConversationLog, LogError, LogStore, log_path, logging_wanted, replay
from ...models.default import freqkv_home
from .. import options as o
from ..chat_commands import EXIT, HELP_TEXT, ChatContext, run_command
from ..conversation_log import answer_options
from ..messages import as_flags
from ..output import Readout
from ..running import StopFlag, make_session, read_into, refuse_cache_flags
from ..wrap import WordWrap

MULTILINE = '"""'  # a line starting with it opens several lines, one ending with it closes them


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


ContinueOpt = Annotated[
    bool,
    typer.Option(
        "--continue",
        help="Go on from the last logged conversation (freqkv logs): its documents are read again "
        "if unchanged, its turns fed again.",
    ),
]


@o.takes(
    model=o.MODEL,
    cache=o.CACHE,
    answering=o.ANSWER.defaults(max_new_tokens=512),
    source=o.INPUT.only("password"),
    output=o.LOGGED_OUTPUT.without("as_json"),
)
def chat(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Documents to read before the conversation.", show_default=False),
    ] = None,
    go_on: ContinueOpt = False,
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

    In the chat: /read FILE [--pages 1-3] reads another document; /set temperature 0.7,
    /set max-tokens N, /set system "...", /set stats on|off change how it answers; /clear
    forgets the conversation and keeps the documents, /reset forgets both; /save FILE.fkv
    keeps the whole conversation and /load FILE.fkv goes on from one; /stats shows memory;
    /bye, /exit or Ctrl-D leaves; /? lists the commands; a line starting with \"\"\" begins
    several lines, one ending with \"\"\" ends them; Ctrl-C stops an answer. With standard
    input not a terminal, each input line is one turn. A memory file (from `freqkv read` or
    /save) given first goes on where it stopped. Every exchange is logged (freqkv logs) unless
    --no-log or FREQKV_NO_LOG=1; --continue goes on from the last logged conversation.

    Examples:

      freqkv chat --ctx 32k

      freqkv chat book.pdf --window 2k

      printf 'Who is the narrator?\\nWhere does he go?\\n' | freqkv chat samples/botchan.txt

      freqkv chat book.fkv

      freqkv chat --continue
    """
    from ...memory.file_format import is_memory_file  # torch comes with these: not for --help
    from ...memory.saved import load_session

    cache.settings.check()
    readout = output.readout
    paths = list(paths or [])
    memory = paths.pop(0) if paths and is_memory_file(paths[0]) else None
    if any(is_memory_file(path) for path in paths):
        raise UsageError("a saved memory (.fkv) can only come first: it is the conversation to go on with")
    if memory is not None and go_on:
        raise UsageError("--continue goes on from the log; a saved memory goes on by itself: drop one")
    if memory is not None:
        refuse_cache_flags(cache, memory)
    logged = _last_conversation() if go_on else None
    documents = [source.open(path) for path in paths]  # fail before loading
    loaded = model.load(readout)
    if memory is not None:
        session = load_session(loaded, memory, ctx=cache.ctx_tokens, max_chunk=cache.max_chunk).session
        if session.open_task is not None:  # read by `freqkv read`: the document's turn ends here
            session.finish_document(session.open_task)
    else:
        session = make_session(loaded, cache, answering.system)
    log = ConversationLog("chat", enabled=logging_wanted(output.no_log))
    conversation = Chat(
        Model(loaded, cache.settings, cache.ctx_tokens), session=session, log=log, **answer_options(answering)
    )
    stop = StopFlag()
    if logged is not None:
        _go_on(logged, conversation, log, readout, stop)
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    for document in documents:
        with stop.armed():
            read_into(conversation.session, document, readout, stop, task="read")
        if stop():
            raise Interrupted("interrupted while reading")
    if interactive:
        policy = session.policy
        room = "no limit" if session.ctx is None else f"up to {session.ctx:,} tokens"
        held = "full cache" if policy.kind == "full" else f"a {policy.window:,}-entry {policy.kind} window"
        readout.info(f"freqkv chat · {loaded.name} · {room} in {held} · {HELP_TEXT}")
    context = ChatContext(conversation, readout, stop, source, log, stats=readout.console.is_terminal)
    while True:
        text = _next_message(interactive)
        if text is None:
            return
        if not text:
            continue
        if text.startswith("/"):
            if run_command(text, context) == EXIT:
                return
            continue
        reply = _answer(conversation, text, readout, stop)
        if reply is None:
            continue
        if reply.stop_reason == "interrupted":
            readout.info("(answer stopped)")
        elif reply.stop_reason == "max_new_tokens":
            readout.info(f"(answer cut at {conversation.answering.max_new_tokens} tokens: /set max-tokens N)")
        if context.stats:
            readout.info(_stats_line(reply, conversation, readout))


def _next_message(interactive: bool) -> str | None:
    """The next message, stripped: one line, or the lines between \"\"\" marks; None at the end
    of input. Ctrl-C at the prompt gives an empty message (a fresh prompt, as shells do)."""
    try:
        line = input("> " if interactive else "")
    except EOFError:
        if interactive:
            sys.stderr.write("\n")
        return None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return ""
    text = line.strip()
    if not text.startswith(MULTILINE):
        return text
    lines = [text[len(MULTILINE) :]]
    while not (len(lines) == 1 and lines[0].endswith(MULTILINE)) and not (
        len(lines) > 1 and lines[-1].rstrip().endswith(MULTILINE)
    ):
        try:
            lines.append(input("... " if interactive else ""))
        except EOFError:
            break  # the end of input closes the message
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return ""
    message = "\n".join(lines).rstrip()
    return message.removesuffix(MULTILINE).strip()


def _answer(conversation: Chat, text: str, readout: Readout, stop: StopFlag) -> Reply | None:
    """One exchange, the answer streamed to stdout (word-wrapped in a terminal)."""
    terminal = sys.stdout.isatty()
    wrap = WordWrap(sys.stdout, shutil.get_terminal_size().columns) if terminal else None

    def write(piece: str) -> None:
        if wrap is not None:
            wrap.write(piece)
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()

    try:
        with stop.armed():
            reply = conversation.reply(text, on_text=write, should_stop=stop)
    except ContextLimitError as exc:
        readout.warn(as_flags(str(exc)))
        return None
    if wrap is not None:
        wrap.finish()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return reply


def _stats_line(reply: Reply, conversation: Chat, readout: Readout) -> str:
    rate = reply.tokens_out / max(reply.seconds, 1e-9)
    return (
        f"  {reply.tokens_out} tokens in {reply.seconds:.1f} s ({rate:,.1f} tok/s) · "
        f"{readout.memory_line(conversation.session)}"
    )


def _last_conversation() -> Conversation:
    """The last logged conversation, checked before the model loads."""
    store = LogStore(log_path())
    try:
        last = store.last_id() if store.path.exists() else None
        if last is None:
            raise UsageError(f"--continue: no conversation has been logged yet (in {store.path})")
        return store.conversation(last)
    except LogError as exc:
        raise UsageError(f"--continue: {exc}") from None


def _go_on(
    logged: Conversation, conversation: Chat, log: ConversationLog, readout: Readout, stop: StopFlag
) -> None:
    """Replay the logged conversation into the chat and say on stderr what came back."""

    def read(session: object, document: object, task: str, question: str | None) -> object:
        return read_into(session, document, readout, stop, task=task, question=question)  # type: ignore[arg-type]

    with stop.armed():
        try:
            restored = replay(logged, conversation.session, read=read, should_stop=stop)
        except ContextLimitError as exc:
            raise UsageError(f"--continue: the conversation does not fit: {exc}") from None
    if stop():
        raise Interrupted("interrupted while going on from the log")
    log.conversation_id = logged.id
    log.follow(conversation.session, restored.exchanges)
    readout.info(f"(went on from conversation {logged.id}: {restored.summary()})")

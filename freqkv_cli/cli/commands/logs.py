"""`freqkv logs`: the conversations chat, qa and summarize logged, newest first; `show ID`: one."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ...errors import InputError, UsageError
from ...logs import Conversation, LogError, LogStore, log_path
from .. import options as o

logs_app = typer.Typer(
    help="The conversations chat, qa and summarize logged (SQLite, FREQKV_HOME/logs.db), newest "
    "first. FREQKV_NO_LOG=1 or --no-log keeps a run out of it; `freqkv chat --continue` goes on "
    "from the last one.",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@logs_app.callback()
def logs(
    context: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many conversations.")] = 10,
    as_json: o.JsonOpt = False,
) -> None:
    """List recent conversations: id, when, command, model, exchanges, documents, first prompt.

    Examples:

      freqkv logs

      freqkv logs -n 3 --json | jq '.[0].id'

      freqkv logs show 12
    """
    if context.invoked_subcommand is not None:
        return
    store = LogStore(log_path())
    try:
        rows = store.recent(count) if store.path.exists() else []
    except LogError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not rows:
        sys.stderr.write(f"no conversations logged yet (in {store.path})\n")
        return
    for row in rows:
        first = " ".join((row["first_prompt"] or "(summary)").split())
        first = first if len(first) <= 60 else first[:59] + "…"
        documents = f" · {row['documents']}" if row["documents"] else ""
        sys.stdout.write(
            f"{row['id']:>4}  {row['started'][:16].replace('T', ' ')}  {row['command']:<9} "
            f"{row['exchanges']} exchange{'s' * (row['exchanges'] != 1)}{documents} · {first}\n"
        )


@logs_app.command(epilog="Exit codes: 2 no such conversation · 3 the log cannot be read.")
def show(
    conversation_id: Annotated[int, typer.Argument(metavar="ID", help="A conversation's id (freqkv logs).")],
    as_json: o.JsonOpt = False,
) -> None:
    """Show one conversation: its model, cache settings, documents, and every exchange.

    Examples:

      freqkv logs show 12

      freqkv logs show 12 --json | jq -r '.exchanges[-1].answer'
    """
    try:
        conversation = LogStore(log_path()).conversation(conversation_id)
    except LogError as exc:
        error = UsageError if "no conversation" in str(exc) or "not exist" in str(exc) else InputError
        raise error(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(conversation.as_json(), ensure_ascii=False) + "\n")
        return
    sys.stdout.write(_as_text(conversation))


def _as_text(conversation: Conversation) -> str:
    s = conversation.settings
    lines = [
        f"conversation {conversation.id} · {conversation.command} · started "
        f"{conversation.as_json()['started']}",
        f"model {conversation.model} · cache {s.get('cache')} · window {s.get('window')} · "
        f"ctx {s.get('ctx') or 'no limit'}" + (f" · system {s['system']!r}" if s.get("system") else ""),
    ]
    for index, exchange in enumerate(conversation.exchanges):
        for d in (d for d in conversation.documents if d.position == index):
            where = d.path or "standard input"
            digest = (d.sha256 or "?")[:12]
            lines.append(f"[document {d.name}: {d.tokens:,} tokens, sha256 {digest}, {where}]")
        lines.append(f"> {exchange.prompt}" if exchange.prompt is not None else "> (summarize)")
        lines.append(exchange.answer)
        lines.append(
            f"  ({exchange.tokens_out} tokens out, {exchange.seconds:.1f} s, {exchange.stop_reason})"
        )
    return "\n".join(lines) + "\n"

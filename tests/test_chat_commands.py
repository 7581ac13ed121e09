"""Chat: Session.clear_conversation, and the chat's /commands as a user types them in a terminal."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import DOC_TEXT

from freqkv_cli.cache.policy import CacheSettings
from freqkv_cli.cli.wrap import WordWrap
from freqkv_cli.documents import open_document
from freqkv_cli.models.loading import load_model
from freqkv_cli.session.session import Session


@pytest.fixture(scope="module")
def loaded(tiny: str):
    return load_model(tiny, device="cpu")


def _talk(session: Session, text: str) -> str:
    session.add_user_turn(text)
    return session.generate(max_new_tokens=4).text


def test_clear_conversation_keeps_the_documents(loaded, doc: Path, tmp_path: Path) -> None:
    session = Session(loaded, loaded.cache_policy(CacheSettings(kind="hybrid", window=256)))
    session.read_document(open_document(doc), task="read")
    after_reading = session.tokens_held
    first = _talk(session, "hello")
    _talk(session, "and more")
    assert session.talked and session.tokens_held > after_reading
    assert session.clear_conversation() == 0  # from the snapshot: nothing read again
    assert session.tokens_held == after_reading and not session.talked
    assert len(session.documents) == 1 and len(session.document_ids) == len(DOC_TEXT.encode())
    assert _talk(session, "hello") == first  # greedy: the same state gives the same answer

    later = tmp_path / "later.txt"
    later.write_text("A second document, read after the talk began.")
    session.read_document(open_document(later), task="read")
    _talk(session, "what now?")
    assert session.clear_conversation() == 1  # read after the snapshot: read again from its ids
    assert [d["name"] for d in session.documents] == [str(doc), str(later)]
    assert session.turns == 2 and not session.talked


def test_clear_conversation_without_a_snapshot_reads_every_document_again(loaded, doc: Path) -> None:
    session = Session(loaded, loaded.cache_policy(CacheSettings(kind="freqkv", window=256)))
    session.read_document(open_document(doc), task="read")
    fresh = session.tokens_held
    restored = Session(loaded, session.policy)
    _talk(session, "hi")
    restored.load_state(session.state())  # as a memory file is loaded: no snapshot in it
    assert restored.clear_conversation() == 1
    assert restored.tokens_held == fresh and restored.documents[0]["sha256"] == session.documents[0]["sha256"]
    restored.reset()
    assert restored.documents == [] and restored.tokens_held == 0


# -- the chat in a terminal ------------------------------------------------------------------------
def _in_a_terminal(
    args: list[str], typed: str, env: dict, columns: int = 40, timeout: float = 180
) -> tuple[int, str]:
    """Run ``freqkv ARGS`` with a pseudo-terminal as its stdin, stdout and stderr, ``typed`` as
    what the user types; returns the exit code and all it showed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "freqkv_cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **env, "COLUMNS": str(columns), "TERM": "dumb"},
        close_fds=True,
    )
    os.close(slave)
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    for line in typed.splitlines(keepends=True):
        os.write(master, line.encode())
        time.sleep(0.05)
    code = process.wait(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    return code, shown.decode("utf-8", "replace").replace("\r\n", "\n")


def test_chat_commands_in_a_terminal(tiny: str, doc: Path, tmp_path: Path) -> None:
    pdf = Path(__file__).parent.parent / "samples" / "botchan-excerpt.pdf"
    typed = "\n".join(
        [
            "/set max-tokens 4",
            "hello there",
            '"""',
            "first line",
            'second line"""',
            "/set stats off",
            "/set temperature 0.7",
            "/set temperature hot",
            "/clear",
            f"/read {pdf} --pages 1-2",
            "/reset",
            "/?",
            "/bye",
            "never read",
        ]
    )
    env = {"FREQKV_HOME": str(tmp_path / "home"), "FREQKV_NO_LOG": ""}  # this one is logged
    code, shown = _in_a_terminal(["chat", str(doc), "-m", tiny, "--window", "256"], typed + "\n", env)
    assert code == 0, shown
    shown = " ".join(shown.split())  # stderr lines wrap at the terminal's width
    assert "Traceback" not in shown
    assert "freqkv chat" in shown and "commands:" in shown  # the banner, and /? again
    assert "(max-tokens 4)" in shown and "(temperature 0.7)" in shown
    assert "needs a number, not 'hot'" in shown
    # the stats line after each of the two answers, then off
    assert len(re.findall(r"\d+ tokens in [\d.]+ s \([\d.,]+ tok/s\) · ", shown)) == 2
    assert "(conversation cleared: 2 turns dropped; documents kept: doc.txt)" in shown
    assert "2/2 pages" in shown  # /read with --pages
    assert "botchan-excerpt.pdf)" in shown
    assert "(everything cleared: documents doc.txt, botchan-excerpt.pdf and the conversation" in shown
    # both exchanges were logged, the multi-line message as one prompt
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "freqkv_cli", "logs", "--json"],
            capture_output=True,
            env={**os.environ, **env},
            check=True,
        ).stdout
    )
    assert len(rows) == 1 and rows[0]["exchanges"] == 2 and rows[0]["first_prompt"] == "hello there"


def test_word_wrap_never_splits_a_word_at_the_edge() -> None:
    text = "The narrator, a reckless young man from Tokyo, takes a post teaching mathematics on Shikoku."
    out = io.StringIO()
    wrap = WordWrap(out, 24)
    for start in range(0, len(text), 5):  # streamed in pieces that cut words
        wrap.write(text[start : start + 5])
    wrap.finish()
    lines = out.getvalue().split("\n")
    assert all(len(line) <= 24 for line in lines) and len(lines) > 3
    assert " ".join(lines).split() == text.split()  # every word whole, in order

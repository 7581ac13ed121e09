"""Chat: Session.clear_conversation, and the chat's /commands as a user types them in a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DOC_TEXT

from freqkv_cli.cache.policy import CacheSettings
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

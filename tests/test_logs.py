"""Conversation logs (written, listed, shown, broken, turned off, continued) and freqkv models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinymodel import save_tiny_model

from freqkv_cli.cli.app import run
from freqkv_cli.errors import EXIT_USAGE
from freqkv_cli.logs import SCHEMA_VERSION, LogStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FREQKV_NO_LOG", raising=False)
    return tmp_path / "home"


def _json(capsys: pytest.CaptureFixture, *args: str) -> object:
    assert run([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_qa_and_summarize_are_logged_listed_and_shown(
    tiny: str, doc: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(["qa", str(doc), "Who is the narrator?", "-m", tiny, "-w", "256", "-n", "3", "-q"]) == 0
    answer = capsys.readouterr().out.strip()
    assert run(["summarize", str(doc), "-m", tiny, "-w", "256", "-n", "2", "-q"]) == 0
    capsys.readouterr()
    rows = _json(capsys, "logs")
    assert [r["command"] for r in rows] == ["summarize", "qa"]  # newest first
    assert rows[1]["first_prompt"] == "Who is the narrator?" and rows[1]["exchanges"] == 1
    shown = _json(capsys, "logs", "show", str(rows[1]["id"]))
    document = shown["documents"][0]
    assert document["sha256"] == hashlib.sha256(doc.read_bytes()).hexdigest()
    assert document["path"] == str(doc.resolve()) and document["task"] == "qa"
    exchange = shown["exchanges"][0]
    assert exchange["answer"].strip() == answer and exchange["tokens_out"] >= 1
    assert exchange["options"]["max_new_tokens"] == 3 and shown["settings"]["window"] == 256
    assert run(["logs", "-n", "1"]) == 0 and "summarize" in capsys.readouterr().out
    assert run(["logs", "show", "99"]) == EXIT_USAGE
    assert "no conversation 99" in capsys.readouterr().err
    assert LogStore(home / "logs.db").path.exists()
    import sqlite3

    assert sqlite3.connect(home / "logs.db").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_no_log_and_the_environment_keep_runs_out(
    tiny: str, doc: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert run(["qa", str(doc), "Why?", "-m", tiny, "-w", "256", "-n", "2", "-q", "--no-log"]) == 0
    monkeypatch.setenv("FREQKV_NO_LOG", "1")
    assert run(["summarize", str(doc), "-m", tiny, "-w", "256", "-n", "2", "-q"]) == 0
    capsys.readouterr()
    assert not (home / "logs.db").exists()
    assert _json(capsys, "logs") == []


def test_a_damaged_log_warns_once_and_the_answer_is_given(
    tiny: str, doc: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    home.mkdir(parents=True)
    (home / "logs.db").write_bytes(b"this is not a database" * 100)
    assert run(["qa", str(doc), "Why?", "-m", tiny, "-w", "256", "-n", "3", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # the answer
    warnings = [line for line in captured.err.splitlines() if "conversation log" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the conversation log")
    assert "not logged" in warnings[0]


def _chat(tiny: str, *args: str, typed: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freqkv_cli", "chat", *args, "-m", tiny, "-w", "256", "-n", "4"],
        input=typed.encode(),
        capture_output=True,
        env={**os.environ, **env},
        timeout=180,
    )


def test_chat_continue_replays_the_last_conversation(
    tiny: str, doc: Path, home: Path, tmp_path: Path
) -> None:
    env = {"FREQKV_HOME": str(home)}
    first = _chat(tiny, str(doc), typed="hello\nand then?\n", env=env)
    assert first.returncode == 0, first.stderr
    again = _chat(tiny, "--continue", typed="/stats\nwhat else?\n", env=env)
    assert again.returncode == 0, again.stderr
    assert b"(went on from conversation 1: 2 exchanges; read again: " in again.stderr
    # the replay held the document and both exchanges before the new turn
    assert int(again.stderr.split(b" tokens ")[0].split()[-1].replace(b",", b"")) > len(doc.read_bytes())
    conversation = LogStore(home / "logs.db").conversation(1)
    assert [e.prompt for e in conversation.exchanges] == ["hello", "and then?", "what else?"]
    doc.write_text("changed")
    changed = _chat(tiny, "--continue", typed="", env=env)
    assert (
        changed.returncode == 0 and b"not restored: " in changed.stderr and b"has changed" in changed.stderr
    )


def test_continue_with_nothing_logged_is_a_usage_error(tiny: str, home: Path) -> None:
    result = _chat(tiny, "--continue", typed="", env={"FREQKV_HOME": str(home)})
    assert result.returncode == EXIT_USAGE and b"no conversation has been logged yet" in result.stderr


def test_models_lists_what_is_under_freqkv_home(
    tiny: str, doc: Path, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save_tiny_model(home / "models" / "converted-one")
    adapter = home / "adapters" / "mine"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    (home / "heads").mkdir()
    (home / "heads" / "abc.json").write_text(json.dumps({"heads": [[0, 1], [1, 2]], "scores": []}))
    memory = home / "memories" / "doc.fkv"
    memory.parent.mkdir()
    assert run(["read", str(doc), "-m", tiny, "-w", "256", "-o", str(memory), "-q"]) == 0
    elsewhere = save_tiny_model(tmp_path / "elsewhere" / "model")
    capsys.readouterr()
    entries = _json(capsys, "models", str(tmp_path / "elsewhere"))
    kinds = {e["kind"]: e for e in entries}
    assert entries[0]["kind"] == "default"
    assert kinds["converted"]["path"] == str(home / "models" / "converted-one")
    mine = {"kind": "adapter", "path": str(adapter), "note": "LoRA adapter on base"}
    assert any(mine.items() <= e.items() for e in entries)
    assert kinds["memory"]["path"] == str(memory) and "tokens of" in kinds["memory"]["note"]
    assert kinds["heads"]["note"] == "2 retrieval heads"
    assert kinds["model"]["path"] == str(elsewhere)
    assert all(e["bytes"] > 0 for e in entries if e["path"])
    assert run(["models"]) == 0 and str(memory) in capsys.readouterr().out  # a path never cut

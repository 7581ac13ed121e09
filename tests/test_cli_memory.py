"""`freqkv read`, and memory files wherever a document goes: qa, summarize, chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import TEXT, cli, one_line_error
from tinymodel import save_tiny_model

from freqkv_cli.cli.app import run
from freqkv_cli.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE

QUESTION = "Who is the narrator's servant?"


def test_asking_a_saved_memory_in_a_new_process_answers_as_right_after_reading(
    tiny: str, doc: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    memory = tmp_path / "doc.fkv"
    flags = ["-m", tiny, "--window", "256", "-n", "12", "--json"]
    assert run(["qa", str(doc), QUESTION, "--save", str(memory), *flags]) == 0
    first = json.loads(capsys.readouterr().out)
    assert memory.is_file() and first["memory"] is False and first["compressions"] > 3
    done = cli("qa", str(memory), QUESTION, "-m", tiny, "-n", "12", "--json")
    assert done.returncode == 0, done.stderr
    later = json.loads(done.stdout)
    assert later["memory"] is True and later["load_seconds"] >= 0
    assert later["answer"] == first["answer"] and later["tokens_out"] == first["tokens_out"]
    assert later["quoted_passages"] == first["quoted_passages"] and later["quoted_passages"]
    assert all(passage in TEXT for passage in later["quoted_passages"])  # byte tokens: pieces of the text
    assert later["document_tokens"] == first["document_tokens"]


def test_read_writes_a_memory_that_summarize_and_chat_go_on_from(
    tiny: str, doc: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    memory = tmp_path / "doc.fkv"
    assert run(["read", str(doc), "-o", str(memory), "-m", tiny, "--window", "256", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == memory.stat().st_size and report["document_tokens"] == len(TEXT.encode())
    assert run(["summarize", str(memory), "-m", tiny, "-n", "6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["memory"] is True and summary["tokens_in"] > report["document_tokens"]
    saved = tmp_path / "chat.fkv"
    done = cli("chat", str(memory), "-m", tiny, "-n", "4", stdin=f"hello\n/save {saved}\n".encode())
    assert done.returncode == 0, done.stderr
    assert saved.is_file() and "kept the memory" in done.stderr.decode()
    again = cli("chat", str(saved), "-m", tiny, "-n", "4", stdin=b"/stats\n")
    assert again.returncode == 0, again.stderr
    tokens = int(again.stderr.decode().split(" tokens")[0].split()[-1].replace(",", ""))
    assert tokens > report["document_tokens"] + len(b"hello")  # the document and the turn


def test_bad_memories_are_refused_in_one_line_and_left_alone(tiny: str, doc: Path, tmp_path: Path) -> None:
    memory = tmp_path / "doc.fkv"
    assert run(["read", str(doc), "-o", str(memory), "-m", tiny, "--window", "256", "-q"]) == 0
    data = memory.read_bytes()
    done = cli("qa", str(memory), QUESTION, "-m", tiny, "--window", "512")
    assert done.returncode == EXIT_USAGE and "--window" in one_line_error(done.stderr.decode())
    other = save_tiny_model(tmp_path / "other", seed=1)
    done = cli("qa", str(memory), QUESTION, "-m", str(other))
    assert done.returncode == EXIT_MODEL and "another model" in one_line_error(done.stderr.decode())
    cut = tmp_path / "cut.fkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    done = cli("qa", str(cut), QUESTION, "-m", tiny)
    assert done.returncode == EXIT_INPUT, done.stderr
    one_line_error(done.stderr.decode())
    done = cli("read", str(doc), "-o", str(tmp_path / "missing" / "x.fkv"), "-m", tiny)
    assert done.returncode == EXIT_USAGE and "writable" in one_line_error(done.stderr.decode())
    assert memory.read_bytes() == data


def test_eval_needle_asks_later_from_memory_files(tiny: str, capsys: pytest.CaptureFixture) -> None:
    args = ["eval", "needle", "-m", tiny, "--lengths", "600", "--depths", "0.5", "--seeds", "1"]
    args += ["--cache", "hybrid,freqkv", "--window", "256", "--later", "both,none", "--json"]
    assert run(args) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    caches = [trial["cache"] for trial in results]
    asked = [f"{kind}{way}" for kind in ("hybrid", "freqkv") for way in ("", " later/both", " later/none")]
    assert caches == asked
    keys = {trial["key"] for trial in results}
    assert len(keys) == 1  # every way of asking gets the same prompt
    assert run([*args[:-3], "--later", "nope"]) == EXIT_USAGE

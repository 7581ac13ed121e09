"""The freqkv command: in-process through run(), and as real subprocesses (pipes, exit codes, signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DOC_TEXT
from tinymodel import save_tiny_model

from freqkv_cli.cli.app import run
from freqkv_cli.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OUT_OF_MEMORY, EXIT_USAGE

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).parent.parent / "samples"
TEXT = DOC_TEXT  # what the doc fixture holds
JSON_KEYS = {
    "answer": str,
    "model": str,
    "device": str,
    "window": int,
    "tokens_in": int,
    "tokens_out": int,
    "compressions": int,
    "kv_bytes": int,
    "full_kv_bytes": int,
    "peak_rss_bytes": int,
    "seconds": float,
}


def cli(*args: str, stdin: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """The installed console script's module, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "freqkv_cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "expected an error message on stderr"
    assert "Traceback" not in stderr
    assert lines[-1].startswith("freqkv: error: ")
    assert len(lines) == 1, stderr
    return lines[-1]


# -- help ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["summarize", "qa", "chat", "count", "info"])
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture) -> None:
    assert run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "--model" in out


# -- the main jobs -----------------------------------------------------------------------------
def test_summarize_json_schema_and_compression(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    code = run(["summarize", str(doc), "-m", tiny, "--window", "256", "-n", "8", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)  # stdout holds exactly one JSON object
    for key, kind in JSON_KEYS.items():
        assert isinstance(data[key], kind), key
    assert data["peak_gpu_bytes"] is None and data["pages"] is None
    assert data["document_tokens"] == len(TEXT.encode())  # byte tokenizer: one token per byte
    assert data["tokens_in"] > data["document_tokens"]
    assert 1 <= data["tokens_out"] <= 8
    # 3000 tokens through a 256-slot window: compressed, memory bounded, and the readout says so
    assert data["compressions"] > 10
    assert data["kv_entries"] <= 256
    assert data["kv_bytes"] < data["full_kv_bytes"] / 10
    assert not data["truncated"]


def test_qa_streams_answer_to_stdout_and_stats_to_stderr(tiny: str, doc: Path) -> None:
    result = cli(
        "qa", str(doc), "Who is the narrator?", "-m", tiny, "--window", "256", "-n", "12", "--progress"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the (random) answer
    assert b"compressions" in result.stderr and b"compressions" not in result.stdout
    assert b"KV" in result.stderr


def test_qa_json_lists_the_quoted_passages(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    book = doc.read_text()
    quoted = {}
    for reread in ("4", "0"):
        args = ["qa", str(doc), "Who is the narrator?", "-m", tiny, "--window", "512", "-n", "2"]
        assert run([*args, "--reread", reread, "--json"]) == 0
        quoted[reread] = json.loads(capsys.readouterr().out).get("quoted_passages")
    assert quoted["0"] is None and 1 <= len(quoted["4"]) <= 4
    assert all(passage in book for passage in quoted["4"])  # byte tokens: pieces of the book


def test_stdin_pipe(tiny: str) -> None:
    result = cli("summarize", "-", "-m", tiny, "--window", "128", "-n", "4", "--json", stdin=TEXT.encode())
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["document"] == "<stdin>" and data["document_tokens"] == len(TEXT.encode())
    assert data["compressions"] > 0


def test_pdf_pages_are_read(tiny: str, capsys: pytest.CaptureFixture) -> None:
    code = run(
        [
            "summarize",
            str(SAMPLES / "botchan-excerpt.pdf"),
            "-m",
            tiny,
            "--window",
            "256",
            "-n",
            "2",
            "--pages",
            "2-3",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["pages"] == 2 and data["document_tokens"] > 1000


def test_ctx_cut_is_never_silent(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    code = run(["summarize", str(doc), "-m", tiny, "--window", "128", "--ctx", "1k", "-n", "4", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    data = json.loads(captured.out)
    assert data["truncated"] and data["document_tokens"] < data["document_tokens_total"] == len(TEXT.encode())
    assert data["tokens_in"] + 4 <= 1024
    assert "past --ctx" in captured.err and f"{len(TEXT.encode()):,}" in captured.err


def test_count_needs_no_model_run(tiny: str, doc: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["count", str(doc), "-m", tiny, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["characters"] == len(TEXT) and data["tokens"] == len(TEXT.encode())


def test_info_reports_memory_against_full_cache(tiny: str, capsys: pytest.CaptureFixture) -> None:
    assert run(["info", "-m", tiny, "--window", "1k", "--ctx", "32k", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (K,V) x kv heads x head_dim x fp32 bytes
    assert data["kv_bytes_per_token"] == per_token
    assert data["kv_bytes_window"] == 1024 * per_token and data["kv_bytes_full_at_ctx"] == 32768 * per_token


def test_freqkv_json_beside_checkpoint_sets_defaults(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = save_tiny_model(tmp_path / "tuned")
    (folder / "freqkv.json").write_text(json.dumps({"window": 96, "sink": 8, "recent": 16, "ratio": 0.25}))
    assert run(["info", "-m", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["window"], data["sink"], data["recent"], data["ratio"]) == (96, 8, 16, 0.25)
    assert run(["info", "-m", str(folder), "--window", "200", "--json"]) == 0  # flags win
    assert json.loads(capsys.readouterr().out)["window"] == 200


def test_chat_through_a_pipe(tiny: str, doc: Path) -> None:
    turns = "hello there\n/stats\nsecond question\n/reset\nthird\n"
    result = cli("chat", str(doc), "-m", tiny, "--window", "256", "-n", "5", stdin=turns.encode())
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.decode().split("\n") if line]
    assert len(result.stdout.decode().strip("\n").split("\n")) >= 3 or len(answers) >= 1
    assert b"compressions" in result.stderr  # /stats
    assert b"conversation cleared" not in result.stdout


def test_chat_read_of_a_bad_file_keeps_the_chat_alive(tiny: str, tmp_path: Path) -> None:
    turns = f"/read {tmp_path / 'missing.txt'}\nstill here?\n"
    result = cli("chat", "-m", tiny, "--window", "256", "-n", "3", stdin=turns.encode())
    assert result.returncode == 0, result.stderr
    assert b"missing.txt" in result.stderr and result.stdout.strip()


# -- bad input: one line, the right exit code, checked before the model loads --------------------
NO_MODEL = "/nonexistent/model"  # if input were checked after loading, the error would be the model's


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["summarize", "/nonexistent/file.txt"], EXIT_INPUT, "no such file"),
        (["summarize", str(DATA)], EXIT_INPUT, "directory"),
        (["summarize", str(DATA / "empty.txt")], EXIT_INPUT, "empty"),
        (["summarize", str(DATA / "binary.bin")], EXIT_INPUT, "binary"),
        (["summarize", str(DATA / "pypdf-r4-aes-user-password.pdf")], EXIT_INPUT, "password"),
        (
            ["summarize", str(DATA / "pypdf-r4-aes-user-password.pdf"), "--password", "wrong"],
            EXIT_INPUT,
            "password",
        ),
        (["summarize", str(DATA / "synthetic-image-only.pdf")], EXIT_INPUT, "OCR"),
        (["summarize", str(DATA / "not-a-pdf.pdf")], EXIT_INPUT, "not a PDF"),
        (["qa", str(DATA / "utf8-bom.txt"), "q", "--ctx", "32q"], EXIT_USAGE, "32q"),
        (["qa", str(DATA / "utf8-bom.txt"), "q", "--ratio", "2"], EXIT_USAGE, "ratio"),
        (["qa", str(DATA / "utf8-bom.txt"), "q", "--reread", "-1"], EXIT_USAGE, "reread"),
        (["summarize", str(DATA / "utf8-bom.txt"), "--cache", "lru"], EXIT_USAGE, "lru"),
        (["summarize", str(DATA / "utf8-bom.txt"), "--pages", "1-2"], EXIT_USAGE, "PDF"),
        (["summarize", str(DATA / "utf8-bom.txt"), "--bogus-flag"], EXIT_USAGE, "bogus"),
        (["summarize", str(DATA / "utf8-bom.txt"), "--max-new-tokens", "0"], EXIT_USAGE, "max-new-tokens"),
    ],
)
def test_bad_input_before_model(
    args: list[str], code: int, needle: str, capsys: pytest.CaptureFixture
) -> None:
    got = run([*args, "--model", NO_MODEL] if "--bogus-flag" not in args else args)
    err = capsys.readouterr().err
    line = one_line_error(err)
    assert got == code, err
    assert needle.lower() in line.lower(), line


def test_image_only_pdf_message_mentions_ocr_in_a_subprocess() -> None:
    result = cli("summarize", str(DATA / "synthetic-image-only.pdf"))
    assert result.returncode == EXIT_INPUT
    assert "OCR" in one_line_error(result.stderr.decode())


@pytest.mark.parametrize(
    ("model_args", "code", "needle"),
    [
        (["--model", "/nonexistent/model"], EXIT_MODEL, "not found"),
        (["--model", str(DATA)], EXIT_MODEL, "not a model folder"),
        (["--model", str(DATA / "utf8-bom.txt")], EXIT_MODEL, "gguf"),
        (["--device", "tpu"], EXIT_USAGE, "device"),
        (["--device", "cuda"], EXIT_USAGE, "cuda"),
        (["--dtype", "int3"], EXIT_USAGE, "dtype"),
        (["--window", "3"], EXIT_USAGE, "window"),
    ],
)
def test_bad_model_settings(
    tiny: str, model_args: list[str], code: int, needle: str, capsys: pytest.CaptureFixture
) -> None:
    args = ["qa", str(DATA / "utf8-bom.txt"), "question", *model_args]
    if "--model" not in model_args:
        args += ["--model", tiny]
    got = run(args)
    line = one_line_error(capsys.readouterr().err)
    assert got == code, line
    assert needle.lower() in line.lower(), line


def test_unsupported_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path / "gpt2"
    )
    got = run(["info", "--model", str(tmp_path / "gpt2")])
    line = one_line_error(capsys.readouterr().err)
    assert got == EXIT_MODEL and "gpt2" in line and "llama" in line


def test_out_of_memory_suggests_a_smaller_window(
    tiny: str, doc: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    from freqkv_cli.engine.streaming import StreamingEngine

    def boom(self, ids):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StreamingEngine, "_forward", boom)
    got = run(["summarize", str(doc), "-m", tiny])
    line = one_line_error(capsys.readouterr().err)
    assert got == EXIT_OUT_OF_MEMORY and "--window" in line


@pytest.mark.parametrize("max_chunk", [None, 50])
def test_max_chunk_bounds_every_forward_call(
    tiny: str,
    doc: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    max_chunk: int | None,
) -> None:
    from freqkv_cli.engine.streaming import StreamingEngine

    sizes: list[int] = []
    forward = StreamingEngine._forward

    def counted(self, ids):
        sizes.append(len(ids))
        return forward(self, ids)

    monkeypatch.setattr(StreamingEngine, "_forward", counted)
    flags = [] if max_chunk is None else ["--max-chunk", str(max_chunk)]
    code = run(["summarize", str(doc), "-m", tiny, "--window", "256", "--cache", "full", "-n", "2", *flags])
    assert code == 0, capsys.readouterr().err
    if max_chunk is None:
        assert max(sizes) > 50  # the full cache reads the 3,000-token text in 2,048-token calls
    else:
        assert max(sizes) == max_chunk and sum(sizes) > len(TEXT)


def test_ctrl_c_mid_stream_exits_130_with_one_line(tiny: str, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text(TEXT * 200)  # ~600k byte tokens: minutes of work, interrupted after a moment
    process = subprocess.Popen(
        [sys.executable, "-m", "freqkv_cli", "summarize", str(big), "-m", tiny, "--window", "256", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(20)  # imports (~9 s on 2 cores), model load, then streaming for a while
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in one_line_error(err.decode())
    assert out == b""  # --json: no half-written object

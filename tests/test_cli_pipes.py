"""The command line in scripts and pipes (#18): exit 0 under `head` with pipefail, --version,
stderr lines that stay whole off a terminal, only our own lines on stderr (no dependency's bars or
warnings, even on a first run), the notice of an answer cut at --max-new-tokens, several documents
and a question from standard input; and help that reads the same in every command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from freqkv_cli import __version__
from freqkv_cli.cli.app import run
from freqkv_cli.cli.help_format import polish_help
from freqkv_cli.cli.tree import full_app
from freqkv_cli.documents.joined import heading
from freqkv_cli.errors import EXIT_USAGE

A_TEXT = "The lighthouse on Skarv island is kept by Marta Olsen, who rows out every morning.\n" * 6
B_TEXT = "The ferry to Skarv leaves the harbour at nine and comes back at four.\n" * 6


def cli(*args: str, stdin: bytes | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "freqkv_cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def shell(script: str) -> subprocess.CompletedProcess:
    """``script`` in bash with pipefail, freqkv as ``$FREQKV``."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        timeout=300,
        env={**os.environ, "FREQKV": f"{sys.executable} -m freqkv_cli"},
    )


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def two_docs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "lighthouse.txt", tmp_path / "ferry.txt"
    a.write_text(A_TEXT)
    b.write_text(B_TEXT)
    return a, b


# -- pipes -----------------------------------------------------------------------------------------
def test_version_prints_the_package_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode() == f"freqkv {__version__}\n"


@pytest.mark.parametrize("command", ["--help", "qa --help", "eval ppl --help", "--version"])
def test_help_through_head_and_a_closed_pipe_exits_0(command: str) -> None:
    result = shell(f"$FREQKV {command} | head -1")
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    # The reader gone before anything is written: a real EPIPE on the first write.
    result = shell(f"{{ sleep 0.5; $FREQKV {command}; }} | true")
    assert result.returncode == 0 and result.stderr == b"", result.stderr


def test_an_answer_through_head_or_into_a_closed_pipe_exits_0(tiny: str, two_docs: tuple[Path, Path]) -> None:
    a, _ = two_docs
    for reader in ("head -1", "true"):
        result = shell(f"$FREQKV qa {a} 'Who keeps it?' -m {tiny} -n 400 --cache sink | {reader}")
        assert result.returncode == 0, result.stderr
        assert "error" not in result.stderr.decode() and "Traceback" not in result.stderr.decode()


# -- stderr ----------------------------------------------------------------------------------------
def test_stats_and_warnings_stay_one_line_each_when_stderr_is_a_file(
    tiny: str, two_docs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = two_docs
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as stream:
        subprocess.run(
            [sys.executable, "-m", "freqkv_cli", "qa", str(a), "Who?", "-m", tiny, "-n", "2", "-w", "256"],
            stdout=subprocess.DEVNULL,
            stderr=stream,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "80"},
            check=True,
        )
    lines = err.read_text().splitlines()
    stats = [line for line in lines if "compressions" in line]
    assert len(stats) == 1 and len(stats[0]) > 80, lines  # longer than the 80 columns it was cut at
    assert "RSS" in stats[0] and stats[0].endswith("s in all"), stats
    assert not any(line.startswith(("RSS", "MiB", "GiB")) for line in lines), lines
    assert lines == ["warning: the answer was cut at --max-new-tokens 2; raise it for a longer one", stats[0]]


def test_the_progress_bar_of_a_text_moves_by_characters(tiny: str) -> None:
    """One 16k-character block of text: the bar used to sit at 0 until the block was read."""
    from freqkv_cli.cache.policy import CachePolicy
    from freqkv_cli.documents import open_document
    from freqkv_cli.models.loading import load_model
    from freqkv_cli.session.session import Session

    loaded = load_model(tiny, device="cpu")
    session = Session(loaded, CachePolicy(kind="sink", window=256, sink=4, recent=0, ratio=0.5))
    document = open_document("-", stdin=_Bytes(("word " * 800).encode()))
    seen: list[int] = []
    session.read_document(document, on_progress=lambda state: seen.append(state.chars_done))
    total = len(document.text())
    assert seen == sorted(seen) and seen[-1] == total
    assert len({count for count in seen if 0 < count < total}) >= 5, seen


class _Bytes:
    def __init__(self, data: bytes) -> None:
        import io

        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def isatty(self) -> bool:
        return False


def test_a_cut_answer_is_said_on_stderr_and_in_json(tiny: str, two_docs: tuple[Path, Path]) -> None:
    a, _ = two_docs
    result = cli("qa", str(a), "Who keeps it?", "-m", tiny, "-n", "3", "--json", "--cache", "sink")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stop_reason"] == "max_new_tokens" and data["answer_truncated"] is True
    assert stderr_lines(result) == [
        "warning: the answer was cut at --max-new-tokens 3; raise it for a longer one"
    ]


# -- several documents, the question from stdin ----------------------------------------------------
def test_qa_reads_several_documents_in_order_as_one(tiny: str, two_docs: tuple[Path, Path]) -> None:
    a, b = two_docs
    result = cli("qa", str(a), str(b), "When does the ferry leave?", "-m", tiny, "-n", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["documents"] == [str(a), str(b)] and data["document"] == f"{a} + {b}"
    # The byte tokenizer: one token a byte, each document opened by its heading.
    joined = heading(1, _named(a)) + A_TEXT + "\n\n" + heading(2, _named(b)) + B_TEXT
    assert data["document_tokens"] == len(joined.encode())


def _named(path: Path) -> object:
    class Named:
        name = str(path)

    return Named()


def test_the_question_can_come_from_standard_input(tiny: str, two_docs: tuple[Path, Path]) -> None:
    a, _ = two_docs
    question = "When does the ferry leave?"
    given = cli("qa", str(a), question, "-m", tiny, "-n", "2", "--json", "--cache", "sink")
    piped = cli(
        "qa", str(a), "-", "-m", tiny, "-n", "2", "--json", "--cache", "sink", stdin=f"{question}\n".encode()
    )
    assert given.returncode == 0 and piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["tokens_in"] == json.loads(given.stdout)["tokens_in"]
    assert json.loads(piped.stdout)["answer"] == json.loads(given.stdout)["answer"]  # greedy


def test_summarize_takes_standard_input_among_documents(tiny: str, two_docs: tuple[Path, Path]) -> None:
    _, b = two_docs
    result = cli("summarize", "-", str(b), "-m", tiny, "-n", "2", "--json", stdin=A_TEXT.encode())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["documents"] == ["<stdin>", str(b)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["qa", "-", "-"], "cannot both come from standard input"),
        (["qa", "{a}"], "qa takes one or more documents, then the question"),
        (["summarize", "-", "-"], "standard input (-) can be read only once"),
        (["qa", "{a}", "{b}", "q", "--pages", "1"], "with several documents, drop it"),
        (["qa", "{a}", "   "], "the question is empty"),
        (["summarize", "{a}", "--max-chunk", "0"], "--max-chunk"),
    ],
)
def test_bad_inputs_exit_2_in_one_line(
    tiny: str, two_docs: tuple[Path, Path], args: list[str], message: str
) -> None:
    a, b = two_docs
    filled = [arg.format(a=a, b=b) for arg in args]
    result = cli(*filled, "-m", tiny, stdin=b"some text\n")
    lines = stderr_lines(result)
    assert result.returncode == EXIT_USAGE and len(lines) == 1, lines
    assert lines[0].startswith("freqkv: error: ") and message in lines[0]


# -- help ------------------------------------------------------------------------------------------
def _commands() -> dict[str, object]:
    """Every command of the app, by its path ("" for freqkv itself, "eval ppl")."""
    found: dict[str, object] = {}

    def walk(command: object, prefix: str) -> None:
        found[prefix.strip()] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{prefix} {name}")

    walk(polish_help(typer.main.get_command(full_app())), "")
    return found


COMMANDS = _commands()
_ROW = re.compile(r"^│\s+(?:\*\s+)?(--[a-z][a-z-]*)")


def _help(path: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # wide: rows of the options tables do not wrap
    assert run([*path.split(), "--help"]) == 0
    return capsys.readouterr().out


def _option_rows(text: str) -> dict[str, str]:
    """The help's table rows by their long option: the row's lines joined."""
    rows: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            current = match.group(1)
            rows[current] = line
        elif current and line.startswith("│"):
            rows[current] += " " + line
        else:
            current = None
    return rows


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: path or "freqkv")
def test_help_has_plain_metavars_defaults_and_one_example_layout(
    path: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "\n".join(line.rstrip() for line in _help(path, capsys, monkeypatch).splitlines())
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    for marker in ("<str>", "<bool>", "<int", "<float", "<path>", "<list"):
        assert marker not in text, f"{marker} in the help of {path}"
    assert not re.search(r"\[default: \(", text)  # typer's "(text)" form
    # Every option that takes a value shows what it defaults to.
    rows = _option_rows(text)
    for param in COMMANDS[path].params:  # type: ignore[attr-defined]
        if param.param_type_name != "option" or param.is_flag or param.required or param.hidden:
            continue
        long = max(param.opts, key=len)
        assert long in rows, f"{path} {long}: no row in the help"
        assert "[default: " in rows[long], f"{path} {long}: no default shown: {rows[long]}"
    # Examples: one block, each line indented the same.
    if "Examples:" in text:
        block = text.split("Examples:", 1)[1].split("\n\n", 1)[0].strip("\n").splitlines()
        indents = {len(line) - len(line.lstrip()) for line in block}
        assert len(block) >= 2 and len(indents) == 1, block


@pytest.mark.parametrize(
    "torch_first", [False, True], ids=["torch-started-by-the-run", "torch-already-imported"]
)
def test_freqkv_threads_sets_torchs_threads(tiny: str, torch_first: bool) -> None:
    # The CPU has more than one core here (torch's default is one thread a core).
    run_then_ask = (
        f"import sys{', torch' if torch_first else ''}; from freqkv_cli.cli.app import run; "
        "code = run(sys.argv[1:]); import torch; print(code, torch.get_num_threads())"
    )
    done = subprocess.run(
        [sys.executable, "-c", run_then_ask, "info", "-m", tiny, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FREQKV_THREADS": "1"},
    )
    assert done.stdout.splitlines()[-1] == "0 1", (done.stdout[-300:], done.stderr)


@pytest.mark.parametrize("path", ["", "eval", "logs"], ids=lambda path: path or "freqkv")
def test_a_tree_built_for_one_run_lists_what_the_full_tree_lists(
    path: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run builds only the command it runs; the others carry their help read from the source.
    lazy = _help(path, capsys, monkeypatch)
    full = COMMANDS[path]
    full.main(args=[*path.split()[1:], "--help"], prog_name=f"freqkv {path}".strip(), standalone_mode=False)  # type: ignore[attr-defined]
    assert lazy == capsys.readouterr().out


LIGHT_RUNS = [
    (["--help"], 0),
    (["--version"], 0),
    (["sumarize"], 2),
    *(
        (["summarize" if name == "-" else name, "--help"], 0)
        for name in ("qa", "-", "read", "chat", "count", "info")
    ),
    (["models"], 0),
    (["logs"], 0),
]


@pytest.mark.parametrize(
    ("argv", "code"), LIGHT_RUNS, ids=lambda value: " ".join(value) if isinstance(value, list) else None
)
def test_help_version_typos_models_and_logs_load_no_model_libraries(
    argv: list[str], code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch and transformers take seconds to import; none of these needs them (FREQKV_THREADS
    # neither: torch reads it as OMP_NUM_THREADS if the run starts torch).
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path))
    monkeypatch.setenv("FREQKV_THREADS", "1")
    probe = (
        "import sys; from freqkv_cli.cli.app import run; code = run(sys.argv[1:]); "
        "print(code, sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.splitlines()[-1] == f"{code} []", (done.stdout, done.stderr)


def test_help_shows_the_defaults_that_apply(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    qa_help = _help("qa", capsys, monkeypatch)
    assert "Usage: freqkv qa [OPTIONS] PATH... QUESTION " in qa_help
    assert "[default: from the model: 256]" in qa_help  # --recent: the shipped adapter's freqkv.json
    assert "[default: from the model: 1024]" in qa_help  # --window
    assert qa_help.count("[default: 8]") == 1  # --reread, once (it also said "[8]")
    # A paragraph of the docstring, spread over source lines, is one line of help.
    assert "again after them. With the hybrid cache, the question chooses which passages" in qa_help
    for command in ("eval ppl", "eval needle"):
        assert "[default: full,sink,freqkv,hybrid]" in _help(command, capsys, monkeypatch)

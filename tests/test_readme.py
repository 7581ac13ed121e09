"""Every example in the README runs as written.

The shell examples run in a folder holding the files they name (a PDF, a page of HTML, notes, a
log, a user's checkpoint as a tiny model), with FREQKV_MODEL naming a tiny model: the README's
commands unchanged, the model chosen by the environment as a user may. The Python examples and
the first run of "Install and run" use the embedded model (slow).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import DOC_TEXT
from pypdf import PdfReader, PdfWriter
from tinymodel import save_tiny_model

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
SAMPLES = ROOT / "samples"
# Examples that cannot run here, and why (every other one runs).
NOT_HERE = {
    "bash scripts/setup.sh": "installs the environment (network); the files it names are checked below, "
    "and tests/test_embedded.py reads the same excerpt with the embedded model",
    ".venv/bin/python -m pytest": "the test suite itself",
    "freqkv finetune": "trains a model (GPU minutes); tests/test_training.py covers it on tiny models",
    "freqkv summarize book.pdf --model ./model.Q4_K_M.gguf": "de-quantizing a GGUF takes a minute",
    "freqkv summarize book.pdf --model ./freqkv-lora": "needs a trained adapter (tests/test_loading.py)",
    "freqkv summarize book.pdf --model ./Llama-3-70B": "a 70B checkpoint on a GPU; --quantize runs on tiny "
    "models in tests/test_quantize.py",
    'freqkv qa book.pdf "..." --model ./Llama-3-8B --device-map': "a GPU and the CPU; "
    "tests/test_device_map.py "
    "spreads tiny models over CPU pieces",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def shell_examples() -> list[str]:
    lines: list[str] = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")  # continued lines are one command
        lines += [line.strip() for line in text.splitlines() if line.strip()]
    return lines


def _runnable(command: str) -> bool:
    return not any(command.startswith(prefix) for prefix in NOT_HERE)


def test_the_readme_lists_what_it_cannot_run_here() -> None:
    commands = shell_examples()
    for prefix in NOT_HERE:
        assert any(c.startswith(prefix) for c in commands), f"README no longer has {prefix!r}"
    assert sum(map(_runnable, commands)) >= 20


def _two_pages(target: Path) -> None:
    writer = PdfWriter()
    for page in PdfReader(SAMPLES / "botchan-excerpt.pdf").pages[:2]:
        writer.add_page(page)
    with target.open("wb") as handle:
        writer.write(handle)


def _shims(folder: Path) -> None:
    """pdftotext and jq, where the machine lacks them: enough of each for the README's uses."""
    folder.mkdir()
    if shutil.which("pdftotext") is None:
        (folder / "pdftotext").write_text(
            f"#!{sys.executable}\nimport sys\nfrom pypdf import PdfReader\n"
            "sys.stdout.write('\\n'.join(p.extract_text() or '' for p in PdfReader(sys.argv[1]).pages))\n"
        )
    if shutil.which("jq") is None:
        (folder / "jq").write_text(
            f"#!{sys.executable}\nimport json, sys\nkey = sys.argv[-1].lstrip('.')\n"
            "print(json.loads(sys.stdin.read())[key])\n"
        )
    for shim in folder.iterdir():
        shim.chmod(0o755)


@pytest.mark.slow  # ~25 processes, each importing torch: minutes on 2 busy cores
def test_every_shell_example_runs_as_written(tiny: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _two_pages(work / "book.pdf")
    _two_pages(work / "report.pdf")
    (work / "book.txt").write_text((SAMPLES / "botchan.txt").read_text()[:40000])
    (work / "notes.md").write_text("# Notes\n\n" + DOC_TEXT[:1500])
    (work / "page.html").write_text(f"<html><body><h1>Botchan</h1><p>{DOC_TEXT[:1500]}</p></body></html>")
    (work / "log.txt").write_text("10:01 db: started\n10:02 api: failed to connect\n10:03 db: failed\n")
    for checkpoint in ("Llama-2-7b-hf", "llama-freqkv"):  # a user's own checkpoints, here tiny
        save_tiny_model(work / checkpoint)
    _shims(tmp_path / "shims")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'shims'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FREQKV_MODEL": tiny,
        "FREQKV_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "NO_COLOR": "1",
    }
    env.pop("FREQKV_CONFIG", None)
    env.pop("FREQKV_NO_LOG", None)  # as a user runs them: logged (`chat --continue` needs it)
    ran = []
    for command in filter(_runnable, shell_examples()):
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,  # chat: the end of input ends it
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr.decode()}"
        assert b"Traceback" not in result.stderr, command
        ran.append(command)
    assert (work / "book.fkv").is_file() and "freqkv --version" in ran


def test_the_config_example_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freqkv_cli.config import load_config

    (example,) = blocks("toml")
    (tmp_path / "config.toml").write_text(example)
    assert set(tomllib.loads(example)) == {"model", "window", "cache", "device", "dtype", "ctx"}
    assert load_config(tmp_path / "config.toml").values["window"] == "2k"


def test_the_first_run_names_what_the_repository_ships() -> None:
    first = next(line for line in shell_examples() if line.startswith("bash scripts/setup.sh"))
    assert first == "bash scripts/setup.sh && .venv/bin/freqkv summarize samples/botchan-excerpt.pdf"
    assert (ROOT / "scripts" / "setup.sh").is_file() and (SAMPLES / "botchan-excerpt.pdf").is_file()


@pytest.mark.slow
def test_the_python_examples_run_with_the_embedded_model(tmp_path: Path) -> None:
    (tmp_path / "samples").symlink_to(SAMPLES)
    env = {**os.environ, "NO_COLOR": "1"}
    api, low_level = blocks("python")
    for example in (api, low_level):
        result = subprocess.run(
            [sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, timeout=600
        )
        assert result.returncode == 0, result.stderr.decode()
        assert len(result.stdout.split()) > 10  # answers
        if example is api:
            assert result.stderr == b"", result.stderr.decode()  # no progress bars, no warnings
    assert (tmp_path / "botchan.fkv").is_file()

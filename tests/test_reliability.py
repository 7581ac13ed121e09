"""Issue #19: the right exit code and one line for every failure; no lost runs.

Signals, pipes and closed or full outputs run the real console module in a subprocess (the exit
code is the point); the model-file and checkpoint cases go through ``run()``, which returns the
code the console script exits with. The default model is replaced by a tiny stand-in everywhere
except in the one slow test that converts the real one.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import logging
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DOC_TEXT, tiny_model
from tinymodel import byte_tokenizer, save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cli.app import as_flags, run
from freqkv_cli.documents import open_document
from freqkv_cli.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OUT_OF_MEMORY,
    EXIT_USAGE,
    ContextLimitError,
    InputError,
    ModelError,
    OutputError,
    UsageError,
    is_out_of_memory,
)
from freqkv_cli.models import integrity, loading
from freqkv_cli.models.default import DEFAULT_MODEL_NAME
from freqkv_cli.models.loading import LoadedModel, load_model
from freqkv_cli.training.config import FinetuneConfig

TESTS = Path(__file__).parent
DATA = TESTS / "data"
SAMPLES = TESTS.parent / "samples"
TEXT = DOC_TEXT  # what the doc fixture holds


def cli(*args: str, env: dict | None = None, timeout: float = 180, **kwargs: object):
    return subprocess.run(
        [sys.executable, "-m", "freqkv_cli", *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def shell(script: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``script`` in bash with pipefail, freqkv as ``$FREQKV``."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "FREQKV": f"{sys.executable} -m freqkv_cli"},
    )


def error_lines(stderr: str | bytes) -> list[str]:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


def one_line_error(stderr: str | bytes) -> str:
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("freqkv: error: "), lines
    return lines[0]


def _quiet_save(folder: Path) -> Path:
    """save_tiny_model without transformers' progress bar (run() turns it off as well)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return save_tiny_model(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(_quiet_save(tmp_path_factory.mktemp("tiny") / "model"))


# -- 1. interrupts: 130 and one line, wherever they come -------------------------------------------
def _wait_blocked_on_fifo(pid: int, limit: float = 180) -> None:
    """Until the process waits in open() on a FIFO (/proc wchan); a Ctrl-C sent earlier would land
    in its imports instead, which is another test. Loaded CI machines import slowly."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/wchan").read_text().strip() in ("wait_for_partner", "fifo_open"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the process did not reach open() on the FIFO in {limit:.0f} s")


def test_ctrl_c_while_waiting_on_a_fifo_exits_130(tiny: str, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "freqkv_cli", "count", str(fifo), "-m", tiny],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As a terminal starts it: a suite run as a background job (`cmd &` without job control)
        # hands its children SIGINT ignored, and Python then installs no handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_blocked_on_fifo(process.pid)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in one_line_error(err) and out == b""


def test_two_ctrl_c_50_ms_apart_while_sampling_exit_130_on_a_line_of_their_own(tiny: str, doc: Path) -> None:
    args = ["summarize", str(doc), "-m", tiny, "--window", "256", "--temperature", "0.8", "-n", "100000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "freqkv_cli", *args, "--progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.read(1)  # the answer is streaming
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    text = err.decode()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "freqkv: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("freqkv: error: interrupted")  # not on the bar's line


def test_finetune_stopped_by_ctrl_c_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from freqkv_cli.cli import running

    base = save_tiny_model(tmp_path / "base")
    monkeypatch.setattr(running.StopFlag, "__call__", lambda self: True)  # Ctrl-C during step 1
    code = run(finetune_args(base, tmp_path / "out"))
    captured = capsys.readouterr()
    assert code == EXIT_INTERRUPTED
    assert "interrupted" in one_line_error(captured.err)
    assert json.loads(captured.out)["steps"] == 1
    assert (tmp_path / "out" / "checkpoint" / "state.json").is_file()


# -- 2. pipes and outputs --------------------------------------------------------------------------
def test_help_and_an_answer_cut_by_head_exit_0(tiny: str, doc: Path) -> None:
    result = shell("$FREQKV --help | head -1")
    assert result.returncode == 0, result.stderr
    result = shell(f"$FREQKV qa {doc} 'who?' -m {tiny} -n 3000 | head -c 1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().count("freqkv: error") == 0 and "Traceback" not in result.stderr.decode()


def test_a_closed_stdout_is_refused_at_once_with_exit_2(tiny: str, doc: Path) -> None:
    result = shell(f"$FREQKV qa {doc} 'who?' -m {tiny} -n 3 >&-")
    assert result.returncode == EXIT_USAGE
    assert "standard output is closed" in one_line_error(result.stderr)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_full_stdout_exits_2_with_one_line(tiny: str, doc: Path, json_flag: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "freqkv_cli", "qa", str(doc), "who?", "-m", tiny, "-n", "3", *json_flag],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=180,
        )
    assert result.returncode == EXIT_USAGE
    assert "No space left" in one_line_error(result.stderr)


# -- 3. out of memory ------------------------------------------------------------------------------
def test_a_window_too_large_for_the_host_is_out_of_memory(tiny: str, doc: Path) -> None:
    result = cli("qa", str(doc), "who?", "-m", tiny, "--window", "1g", "-n", "2")
    lines = error_lines(result.stderr)
    assert result.returncode == EXIT_OUT_OF_MEMORY, lines
    assert lines[0].startswith("warning: --window 1073741824 is above the model's native window of 4096")
    assert len(lines) == 2 and lines[1].startswith("freqkv: error: out of memory") and "--window" in lines[1]


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
            True,
        ),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
        (RuntimeError("shape mismatch"), False),
        (ModelError("out of memory while reading the model card"), False),
    ],
)
def test_every_kind_of_out_of_memory_is_recognised(exc: BaseException, oom: bool) -> None:
    assert is_out_of_memory(exc) is bool(oom)


# -- 4. every unloadable model: exit 4 -------------------------------------------------------------
def small_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _bad_models(root: Path, tiny: str) -> dict[str, tuple[Path, str]]:
    """name -> (model path, a word the error line must hold)."""
    weights = (Path(tiny) / "model.safetensors").read_bytes()
    models: dict[str, tuple[Path, str]] = {}
    for name, content in [
        ("truncated-safetensors", weights[: len(weights) // 2]),
        ("empty-safetensors", b""),
        ("garbage-safetensors", os.urandom(4096)),
    ]:
        folder = root / name
        shutil.copytree(tiny, folder)
        (folder / "model.safetensors").write_bytes(content)
        models[name] = (folder, "damaged")
    gguf = small_gguf(root / "whole.gguf").read_bytes()
    for name, content in [("truncated-gguf", gguf[: len(gguf) - 100]), ("magic-only-gguf", b"GGUF")]:
        (root / f"{name}.gguf").write_bytes(content)
        models[name] = (root / f"{name}.gguf", "cut short")
    marker = root / "PAYLOAD-RAN"
    folder = root / "pickle-model"
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    models["pickle-pytorch_model.bin"] = (folder, "pickle")
    adapter = root / "pickle-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": tiny,
                "r": 2,
                "lora_alpha": 4,
                "target_modules": ["q_proj"],
                "task_type": "CAUSAL_LM",
            }
        )
    )
    (adapter / "freqkv.json").write_text(json.dumps({"window": 64}))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    models["pickle-adapter_model.bin"] = (adapter, "pickle")
    return models


MODEL_CASES = [
    *((case, command) for command in ("qa", "count") for case in (
        "truncated-safetensors", "empty-safetensors", "garbage-safetensors",
        "truncated-gguf", "magic-only-gguf",
    )),
    # count reads only a tokenizer, never these weights
    ("pickle-pytorch_model.bin", "qa"),
    ("pickle-adapter_model.bin", "qa"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory, tiny: str) -> dict[str, tuple[Path, str]]:
    return _bad_models(tmp_path_factory.mktemp("bad"), tiny)


@pytest.mark.parametrize(("case", "command"), MODEL_CASES)
def test_every_unloadable_model_exits_4_in_one_line(
    case: str, command: str, bad_models: dict, doc: Path, capsys: pytest.CaptureFixture
) -> None:
    path, word = bad_models[case]
    args = [command, str(doc), *(["who?", "-n", "2"] if command == "qa" else []), "-m", str(path)]
    code = run(args)
    line = one_line_error(capsys.readouterr().err)
    assert code == EXIT_MODEL, line
    assert word in line, line
    assert not (path.parent / "PAYLOAD-RAN").exists()


def test_a_gguf_with_only_its_magic_exits_4_through_count_in_a_subprocess(
    bad_models: dict, doc: Path
) -> None:
    result = cli("count", str(doc), "-m", str(bad_models["magic-only-gguf"][0]))
    assert result.returncode == EXIT_MODEL
    assert "cut short" in one_line_error(result.stderr)


def test_header_checks_pass_whole_files(tiny: str, tmp_path: Path) -> None:
    integrity.check_safetensors(Path(tiny) / "model.safetensors")
    info = integrity.check_gguf(small_gguf(tmp_path / "whole.gguf"))
    assert (info.architecture, info.context_length, info.tensors) == ("llama", 2048, 2)


# -- 5. the default model: converted once, by one process, shared, checked --------------------------
STAND_IN = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import tiny_model
    from tinymodel import byte_tokenizer
    from freqkv_cli.models import loading

    def convert(path, target, common):  # the GGUF read (~50 s for the real one), slow enough to race
        with open(os.environ["CONVERSIONS"], "a") as log:
            log.write(f"{{os.getpid()}}\\n")
        time.sleep(2)
        tokenizer = byte_tokenizer()
        model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=4096)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return loading.LoadedModel(model, tokenizer, str(path), "llama", None)

    loading._load_gguf = convert
    loading.default_gguf_path = lambda: Path("/nonexistent/SmolLM2.gguf")
    loading.shipped_adapter_path = lambda: None
    from freqkv_cli.cli.app import run
    sys.exit(run(sys.argv[1:]))
    """
).format(tests=str(TESTS))


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_first_runs_on_an_empty_home_all_succeed(
    processes: int, doc: Path, tmp_path: Path
) -> None:
    conversions = tmp_path / "conversions.txt"
    env = {**os.environ, "FREQKV_HOME": str(tmp_path / "home"), "CONVERSIONS": str(conversions)}
    started = [
        subprocess.Popen(
            [sys.executable, "-c", STAND_IN, "summarize", str(doc), "-n", "4", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(processes)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in started]
    for process, out, err in results:
        assert process.returncode == 0, err.decode()
        assert json.loads(out)["tokens_out"] >= 1
    assert len(conversions.read_text().split()) == 1  # converted once, the others waited for it
    models = tmp_path / "home" / "models"
    assert [p.name for p in models.iterdir()] == [DEFAULT_MODEL_NAME]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The default model's GGUF read replaced by a tiny Llama, in this process; returns the reads."""
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loading, "default_gguf_path", lambda: tmp_path / "SmolLM2.gguf")
    monkeypatch.setattr(loading, "shipped_adapter_path", lambda: None)
    reads: list[Path] = []

    def convert(path: Path, target: torch.device, common: dict) -> LoadedModel:
        reads.append(path)
        tokenizer = byte_tokenizer()
        model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=4096)
        return LoadedModel(model, tokenizer, str(path), "llama", None)

    monkeypatch.setattr(loading, "_load_gguf", convert)
    return reads


def converted(tmp_path: Path) -> Path:
    return tmp_path / "home" / "models" / DEFAULT_MODEL_NAME


def test_a_conversion_records_checksums_and_is_readable_by_others(stand_in: list, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        load_model("default", device="cpu")
    finally:
        os.umask(previous)
    folder = converted(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # mkdtemp's 0700 would lock other users out
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    manifest = json.loads((folder / integrity.MANIFEST_FILE).read_text())["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= manifest.keys()
    assert manifest["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "emptied":
        path.write_bytes(b"")
    else:  # 200 bytes overwritten in the middle: same size
        middle = len(data) // 2
        data[middle : middle + 200] = bytes(200)
        with open(path, "r+b") as handle:
            handle.write(data)


@pytest.mark.parametrize("how", ["truncated", "emptied", "overwritten"])
def test_a_damaged_conversion_is_noticed_and_rebuilt(
    stand_in: list, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = torch.tensor([[5, 9, 17, 33]])
    with torch.no_grad():
        want = load_model("default", device="cpu").model(ids).logits
    gc.collect()  # its weights are mapped from the file damaged next: touching them would be SIGBUS
    _damage(converted(tmp_path) / "model.safetensors", how)
    with caplog.at_level(logging.WARNING, logger="freqkv_cli"):
        again = load_model("default", device="cpu")
    assert len(stand_in) == 2  # converted again
    assert any("damaged" in record.getMessage() for record in caplog.records)
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, want)
    assert integrity.verify_manifest(converted(tmp_path)) is None


def test_an_intact_conversion_costs_no_full_hash(stand_in: list, tmp_path: Path, monkeypatch) -> None:
    load_model("default", device="cpu")
    hashed: list[Path] = []
    real = integrity._full_digest
    monkeypatch.setattr(integrity, "_full_digest", lambda path: hashed.append(path) or real(path))
    assert integrity.verify_manifest(converted(tmp_path)) is None
    assert hashed == []  # sizes, mtimes and 16 sampled blocks only
    os.utime(converted(tmp_path) / "config.json")  # touched, not changed: one full hash, then cheap again
    assert integrity.verify_manifest(converted(tmp_path)) is None
    assert [p.name for p in hashed] == ["config.json"]
    assert integrity.verify_manifest(converted(tmp_path)) is None and len(hashed) == 1


def test_a_damaged_conversion_in_a_read_only_home_says_what_to_delete(
    stand_in: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    load_model("default", device="cpu")  # the library, outside the CLI: its bars are not checked
    _damage(converted(tmp_path) / "model.safetensors", "truncated")
    capsys.readouterr()
    monkeypatch.setattr(loading, "_writable", lambda folder: False)
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    assert run(["summarize", str(doc), "-n", "2"]) == EXIT_MODEL
    line = one_line_error(capsys.readouterr().err)
    assert f"delete '{converted(tmp_path)}'" in line and "damaged" in line


def test_a_damaged_conversion_is_rebuilt_through_the_cli_with_a_warning(
    stand_in: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(["info", "--json"]) == 0  # info loads the weights (count reads only a tokenizer)
    _damage(converted(tmp_path) / "model.safetensors", "overwritten")
    capsys.readouterr()
    assert run(["info", "--json"]) == 0
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("warning: the converted model") and "checksum" in lines[0]
    assert json.loads(captured.out)["parameters"] > 0
    assert integrity.verify_manifest(converted(tmp_path)) is None  # rebuilt whole


def test_a_conversion_made_before_checksums_is_adopted(stand_in: list, tmp_path: Path) -> None:
    load_model("default", device="cpu")
    (converted(tmp_path) / integrity.MANIFEST_FILE).unlink()
    load_model("default", device="cpu")
    assert len(stand_in) == 1 and (converted(tmp_path) / integrity.MANIFEST_FILE).is_file()


# -- 6. early checks: before any conversion or load ------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--sink", "5000"], "--sink 5000"),
        (["--recent", "5000"], "--recent 5000"),
        (["--window", "3"], "--window 3"),
    ],
)
def test_model_dependent_flags_are_refused_before_the_default_is_converted(
    flags: list[str], needle: str, doc: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The real embedded model: its GGUF metadata and the shipped freqkv.json are read, no weights."""
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loading, "_load_gguf", lambda *a: pytest.fail("the conversion started"))
    started = time.perf_counter()
    assert run(["summarize", str(doc), *flags]) == EXIT_USAGE
    assert needle in one_line_error(capsys.readouterr().err)
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "home" / "models").exists()


def test_an_unwritable_home_is_refused_before_converting(
    doc: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "afile" / "home"))
    monkeypatch.setattr(loading, "_load_gguf", lambda *a: pytest.fail("the conversion started"))
    assert run(["summarize", str(doc), "-n", "2"]) == EXIT_MODEL
    assert "FREQKV_HOME" in one_line_error(capsys.readouterr().err)


def test_flags_are_checked_against_a_folders_config_and_freqkv_json(
    tmp_path: Path, doc: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from freqkv_cli.cli import options

    folder = _quiet_save(tmp_path / "tuned")
    (folder / "freqkv.json").write_text(json.dumps({"window": 96, "sink": 8, "recent": 16, "ratio": 0.25}))
    monkeypatch.setattr(options, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert run(["qa", str(doc), "who?", "-m", str(folder), "--sink", "90"]) == EXIT_USAGE
    line = one_line_error(capsys.readouterr().err)
    assert "--sink 90 + --recent 16 leave no room to compress in a --window of 96" in line


def test_a_window_above_the_native_one_warns_in_one_line(tiny: str, capsys: pytest.CaptureFixture) -> None:
    assert run(["info", "-m", tiny, "--window", "16k", "--json"]) == 0
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("warning: --window 16384 is above the model's native")
    assert json.loads(captured.out)["window"] == 16384
    assert run(["info", "-m", tiny, "--window", "2k", "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_an_error_after_a_half_drawn_line_starts_a_line_of_its_own(
    tiny: str, doc: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from freqkv_cli.cli import options

    def load(*args: object, **kwargs: object) -> None:
        sys.stderr.write("⠋ loading model ... 42%")  # a progress bar drawn without a terminal
        raise ModelError("it broke")

    monkeypatch.setattr(options, "load_model", load)
    assert run(["qa", str(doc), "who?", "-m", tiny]) == EXIT_MODEL
    assert capsys.readouterr().err == "⠋ loading model ... 42%\nfreqkv: error: it broke\n"


# -- 7. documents ----------------------------------------------------------------------------------
def _pdf(objects: list[bytes]) -> bytes:
    """A PDF with a correct cross-reference table; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pypdf_never_prints_its_own_lines_before_ours(tiny: str, tmp_path: Path) -> None:
    """A blank page whose image resource points at a missing object: looking for images makes
    pypdf log 'Object 9 0 not defined', which used to reach the terminal raw."""
    pdf = tmp_path / "missing-xobject.pdf"
    pdf.write_bytes(
        _pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R "
                b"/Resources << /XObject << /Im1 9 0 R >> >> >>",
                b"<< /Length 0 >>\nstream\n\nendstream",
            ]
        )
    )
    result = cli("count", str(pdf), "-m", tiny)
    assert result.returncode == EXIT_INPUT
    assert "no text" in one_line_error(result.stderr)


def test_a_pdf_cut_short_is_damaged_never_a_scan() -> None:
    whole = (DATA / "synthetic-text-3pages.pdf").read_bytes()
    verdicts = set()
    for cut in range(10, len(whole), max(1, len(whole) // 300)):
        try:
            open_document("-", stdin=io.BytesIO(whole[:cut])).text()
            verdicts.add("read")
        except InputError as exc:
            assert "OCR" not in str(exc) and "no text found" not in str(exc), (cut, str(exc))
            verdicts.add("damaged" if "damaged" in str(exc) else str(exc))
    assert verdicts <= {"read", "damaged"}, verdicts


@pytest.mark.parametrize("where", [10, 8192 + 500, 200_000])
def test_one_nul_rule_for_text_wherever_the_nul_is(where: int, tmp_path: Path) -> None:
    text = ("plain words. " * 20_000)[:where] + "\x00" + "more words. " * 10
    path = tmp_path / "nul.txt"
    path.write_bytes(text.encode())
    with pytest.raises(InputError, match="NUL"):
        open_document(path).text()


def test_utf16_text_with_its_nul_bytes_is_still_text(tmp_path: Path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes("\ufeffhello, world\n".encode("utf-16-le"))
    assert open_document(path).text() == "hello, world\n"


# -- 8. fine-tuning outputs ------------------------------------------------------------------------
def finetune_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--model", str(base), "--data", str(SAMPLES / "botchan.txt"), "--out", str(out),
        "--window", "48", "--recent", "8", "--seq-len", "160", "--steps", "6", "--batch", "2",
        "--lora-r", "4", "--save-every", "3", "--quiet", "--json", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quiet_save(tmp_path_factory.mktemp("base") / "model")


def _stop_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from freqkv_cli.training import finetune as finetune_module

    real = finetune_module.Finetuner.train_step

    def train_step(self):  # type: ignore[no-untyped-def]
        if self.step == step:
            raise KeyboardInterrupt  # the process is killed here
        return real(self)

    monkeypatch.setattr(finetune_module.Finetuner, "train_step", train_step)


def _interrupted_run(base: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed at step 4: the checkpoint of step 3 is on disk."""
    with monkeypatch.context() as patch:
        _stop_at(4, patch)
        assert run(finetune_args(base, out)) == EXIT_INTERRUPTED
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3


def test_resume_survives_a_leftover_checkpoint_old(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    _interrupted_run(base, out, monkeypatch)
    (out / "checkpoint.old").mkdir()
    (out / "checkpoint.old" / "junk").write_text("left by a save killed after its first rename")
    capsys.readouterr()
    assert run(finetune_args(base, out, "--resume")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["resumed_from"] == 3 and report["complete"]
    assert not (out / "checkpoint.old").exists() and (out / "adapter_config.json").is_file()


def test_resume_from_only_checkpoint_old_and_tmp_goes_on_from_the_old_one(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    _interrupted_run(base, out, monkeypatch)
    (out / "checkpoint").rename(out / "checkpoint.old")  # killed between the two renames ...
    (out / "checkpoint.tmp").mkdir()  # ... of a save whose new checkpoint was not complete
    (out / "checkpoint.tmp" / "adapter_model.safetensors").write_bytes(b"half")
    capsys.readouterr()
    assert run(finetune_args(base, out, "--resume")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["resumed_from"] == 3  # not a silent restart from step 0
    lines = error_lines(captured.err)
    assert len(lines) == 1 and "checkpoint of step 3" in lines[0] and lines[0].startswith("warning:")


def test_a_full_disk_during_finetune_keeps_the_previous_checkpoint_and_exits_2(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from freqkv_cli.training import finetune as finetune_module

    real_save = torch.save
    saves: list[int] = []

    def save(obj: object, path: object, *args: object, **kwargs: object) -> None:
        saves.append(1)
        if len(saves) == 2:  # the optimizer state of the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(finetune_module.torch, "save", save)
    out = tmp_path / "out"
    assert run(finetune_args(base, out)) == EXIT_USAGE
    line = one_line_error(capsys.readouterr().err)
    assert "No space left" in line and "checkpoint of step 3 is kept" in line and "--resume" in line
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    assert not (out / "checkpoint.tmp").exists()


def test_the_final_adapter_appears_whole_or_not_at_all(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from freqkv_cli.training import finetune as finetune_module

    real_write = finetune_module.TunedSettings.write

    def write(self, folder: Path) -> None:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "freqkv.json"))

    monkeypatch.setattr(finetune_module.TunedSettings, "write", write)
    out = tmp_path / "out"
    assert run(finetune_args(base, out)) == EXIT_USAGE
    assert "cannot write the adapter" in one_line_error(capsys.readouterr().err)
    assert not (out / "adapter_config.json").exists()  # OUT is not an adapter without its freqkv.json
    assert not (out / "adapter_model.safetensors").exists() and not (out / ".adapter.tmp").exists()
    monkeypatch.setattr(finetune_module.TunedSettings, "write", real_write)
    assert run(finetune_args(base, out, "--resume")) == 0
    assert (out / "freqkv.json").is_file() and (out / "adapter_config.json").is_file()


def test_an_adapter_without_freqkv_json_warns_when_loaded(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert run(finetune_args(base, out, "--steps", "3")) == 0
    (out / "freqkv.json").unlink()
    capsys.readouterr()
    assert run(["info", "-m", str(out), "--json"]) == 0
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("warning: adapter") and "freqkv.json" in lines[0]
    assert "--window" in lines[0]


# -- 9. messages name parameters; the CLI shows flags -------------------------------------------
@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("`seq_len` 40 must exceed `window`", "--seq-len 40 must exceed --window"),
        (
            "`batch` 3 must be a multiple of `micro_batch` 2",
            "--batch 3 must be a multiple of --micro-batch 2",
        ),
        ("`target_modules`: no module named 'x'", "--lora-targets: no module named 'x'"),
        ("`kind` 'lru' is not a cache policy", "--cache 'lru' is not a cache policy"),
        ("`selector` 'oracle' is not one of", "--select 'oracle' is not one of"),
        (
            "would pass `ctx` 1,024: use /reset or a larger `ctx`",
            "would pass --ctx 1,024: use /reset or a larger --ctx",
        ),
        ("`not_a_flag` stays", "`not_a_flag` stays"),
    ],
)
def test_parameter_names_become_flags(message: str, shown: str) -> None:
    assert as_flags(message) == shown


def test_a_run_leaves_the_flags_of_every_command_to_later_messages(capsys: pytest.CaptureFixture) -> None:
    # A run knows only the flags of the command it built (here none but --version's tree);
    # after it, a message is written with every command's flags again.
    assert run(["--version"]) == 0
    capsys.readouterr()
    assert as_flags("`micro_batch` 2") == "--micro-batch 2"


def test_library_messages_name_parameters(tiny: str) -> None:
    with pytest.raises(UsageError, match="`seq_len` 40 must exceed `window`"):
        FinetuneConfig(CachePolicy("freqkv", 48, 4, 8, 0.5), seq_len=40).validate()
    with pytest.raises(UsageError, match="`micro_batch` 2"):
        FinetuneConfig(CachePolicy("freqkv", 48, 4, 8, 0.5), seq_len=160, batch=3, micro_batch=2).validate()
    with pytest.raises(UsageError, match="`window` 3 is too small"):
        CachePolicy("freqkv", 3)
    with pytest.raises(UsageError, match="`sink` 60 \\+ `recent` 8 leave no room"):
        CachePolicy("freqkv", 64, 60, 8)
    from freqkv_cli.session.session import Session

    loaded = load_model(tiny, device="cpu")
    session = Session(loaded, CachePolicy("freqkv", 64, 4, 0, 0.5), ctx=20)
    with pytest.raises(ContextLimitError, match="`ctx` 20: use /reset or a larger `ctx`"):
        session.add_user_turn("a question far longer than twenty byte tokens")


def test_output_errors_have_a_usage_code() -> None:
    assert OutputError.exit_code == EXIT_USAGE and issubclass(OutputError, UsageError)


# -- the real embedded model (minutes on a CPU) ----------------------------------------------------
@pytest.mark.slow
def test_two_real_first_runs_at_once_succeed_and_write_only_our_lines_to_stderr(tmp_path: Path) -> None:
    """The embedded model converted from its GGUF and the adapter merged (under a minute), by one
    of two processes started at once on an empty home: both answer; neither shows a tqdm bar, a
    FutureWarning or a library log line, only our stats line and warnings."""
    memo = tmp_path / "memo.txt"
    memo.write_text(TEXT[:1500])
    env = {**os.environ, "NO_COLOR": "1", "FREQKV_HOME": str(tmp_path / "home")}
    commands = (["summarize", str(memo), "-n", "4", "--json"], ["qa", str(memo), "Who keeps it?", "-n", "12"])
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "freqkv_cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for command in commands
    ]
    (json_out, json_err), (text_out, text_err) = [process.communicate(timeout=900) for process in started]
    for process, err in zip(started, (json_err, text_err), strict=True):
        assert process.returncode == 0, err.decode()
    assert json.loads(json_out)["tokens_out"] >= 1
    assert text_out.strip(), "no answer"
    for err in (json_err, text_err):
        lines = error_lines(err)
        assert lines == [line for line in lines if line.startswith("warning: ") or line.endswith(" s in all")]
    assert sum(line.endswith(" s in all") for line in error_lines(text_err)) == 1
    # One copy kept: the GGUF merged with the shipped adapter (the plain weights only for --untuned).
    models = sorted(p.name for p in (tmp_path / "home" / "models").iterdir())
    assert len(models) == 1 and models[0].startswith(f"{DEFAULT_MODEL_NAME}-freqkv-"), models
    assert integrity.verify_manifest(tmp_path / "home" / "models" / models[0]) is None


@pytest.mark.slow
def test_counting_tokens_with_the_default_model_converts_nothing(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The reference: the tokenizer of the converted default (the other slow tests' own, in the
    # run's FREQKV_HOME). Then an empty home, where the tokenizer comes from the GGUF itself.
    adapter = loading.shipped_adapter_path()
    assert adapter is not None
    loading.ensure_default_tuned(adapter)
    assert run(["count", str(doc), "--json"]) == 0
    converted_count = json.loads(capsys.readouterr().out)["tokens"]
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loading, "_load_gguf", lambda *a: pytest.fail("the conversion started"))
    assert run(["count", str(doc), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == converted_count
    assert not (tmp_path / "home" / "models").exists()

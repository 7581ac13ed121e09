"""The config file: where it is, what it may set, and flag > environment > config > default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodel import save_tiny_model

from freqkv_cli.cli.app import run
from freqkv_cli.config import ConfigError, config_path, load_config
from freqkv_cli.errors import EXIT_USAGE


def test_where_the_config_file_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FREQKV_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert config_path() == tmp_path / ".config" / "freqkv" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "freqkv" / "config.toml"
    monkeypatch.setenv("FREQKV_CONFIG", str(tmp_path / "mine.toml"))
    assert config_path() == tmp_path / "mine.toml"
    with pytest.raises(ConfigError, match="no such config file"):  # named, so it must exist
        load_config()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("window = [", "not valid TOML"),
        ("windw = 1024", "unknown key 'windw'"),
        ("window = 'big'", "key 'window' must be a size"),
        ("cache = 'lru'", "key 'cache' must be one of"),
        ("device = 3", "key 'device' must be a string"),
        ("model = true", "key 'model' must be a string"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_and_key(
    text: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    monkeypatch.setenv("FREQKV_CONFIG", str(path))
    assert run(["info", "--json"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"freqkv: error: {path}: ") and needle in err and "\n" not in err


def test_flag_beats_environment_beats_config_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    configured, environment, flagged = (save_tiny_model(tmp_path / name) for name in ("a", "b", "c"))
    (tmp_path / "config.toml").write_text(
        'model = "a"\nwindow = 200\ncache = "freqkv"\ndtype = "bfloat16"\nctx = "8k"\n'
    )
    monkeypatch.setenv("FREQKV_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.delenv("FREQKV_MODEL", raising=False)

    def info(*args: str) -> dict:
        assert run(["info", "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    data = info()  # the config (its model path taken from the config file's folder)
    assert data["model"] == str(configured) and data["window"] == 200 and data["cache"] == "freqkv"
    assert data["dtype"] == "bfloat16" and data["ctx"] == 8192
    assert data["config_file"] == str(tmp_path / "config.toml") and data["config"]["window"] == "200"
    monkeypatch.setenv("FREQKV_MODEL", str(environment))
    assert info()["model"] == str(environment)  # the environment beats the config
    data = info("-m", str(flagged), "--window", "300", "--dtype", "float32")
    assert (data["model"], data["window"], data["dtype"]) == (str(flagged), 300, "float32")  # flags win
    (tmp_path / "config.toml").write_text("")
    data = info()
    assert data["window"] != 200 and data["cache"] == "hybrid" and data["dtype"] == "float32"  # defaults


def test_a_configured_window_leaves_a_saved_memory_alone(
    tiny: str, doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    memory = tmp_path / "doc.fkv"
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    assert run(["read", str(doc), "-m", tiny, "--window", "256", "-o", str(memory), "-q"]) == 0
    (tmp_path / "config.toml").write_text("window = 512\n")
    monkeypatch.setenv("FREQKV_CONFIG", str(tmp_path / "config.toml"))
    capsys.readouterr()
    assert run(["qa", str(memory), "Who?", "-m", tiny, "-n", "2", "--json"]) == 0  # no "drop --window"
    assert json.loads(capsys.readouterr().out)["window"] == 256

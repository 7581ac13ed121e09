"""The user's config file: defaults for the commands, in TOML.

Where: ``$FREQKV_CONFIG`` if set, else ``$XDG_CONFIG_HOME/freqkv/config.toml``, else
``~/.config/freqkv/config.toml`` (macOS included: the same rule, as most command-line tools
there follow it). A missing file is no config. The commands take a value from here only when
neither its flag nor its environment variable gave one; the library API never reads it.
A model path that is not absolute is taken from the config file's folder.

    model = "./Llama-2-7b-hf"
    window = "4k"
    cache = "hybrid"
    device = "cuda"
    dtype = "bfloat16"
    ctx = "128k"
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .cache.policy import POLICIES
from .errors import UsageError
from .sizes import parse_size

CONFIG_ENV = "FREQKV_CONFIG"
# key -> what it must be, as the error says it
KEYS = {
    "model": "a string: 'default', a model folder, a .gguf file or an adapter folder",
    "window": "a size such as 4096 or '4k'",
    "cache": f"one of {', '.join(POLICIES)}",
    "device": "a string: auto, cpu, cuda, cuda:N or mps",
    "dtype": "a string: auto, float32, bfloat16 or float16",
    "ctx": "a size such as 32768 or '32k'",
}


class ConfigError(UsageError):
    """The config file cannot be read or holds a bad key or value (exit 2, as a bad flag)."""


@dataclass(frozen=True)
class Config:
    """``path``: the file read (None: there is none); ``values``: key -> value as strings, as a
    flag would give them."""

    path: Path | None = None
    values: dict[str, str] = field(default_factory=dict)


def config_path() -> Path:
    """Where the config file is looked for (it may not exist)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "freqkv" / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config at ``path`` (default :func:`config_path`); ``Config()`` when there is no file.
    Raises ConfigError naming the file (and the key) for anything it cannot take."""
    path = config_path() if path is None else path
    if not path.exists():
        if os.environ.get(CONFIG_ENV) and path == config_path():  # asked for by name: must exist
            raise ConfigError(f"{path}: no such config file (set by {CONFIG_ENV})")
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values = {key: _checked(path, key, value) for key, value in data.items()}
    if values.get("model", "default") != "default":  # a path: relative to the config file's folder
        values["model"] = str(path.parent / Path(values["model"]).expanduser())
    return Config(path, values)


def _checked(path: Path, key: str, value: Any) -> str:
    """``value`` of ``key`` as a flag's text, or ConfigError."""
    if key not in KEYS:
        raise ConfigError(f"{path}: unknown key '{key}'; the keys are {', '.join(KEYS)}")
    wrong = ConfigError(f"{path}: key '{key}' must be {KEYS[key]}, not {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise wrong
    if key in ("window", "ctx"):
        try:
            parse_size(str(value))
        except UsageError:
            raise wrong from None
    elif not isinstance(value, str) or not value.strip() or (key == "cache" and value not in POLICIES):
        raise wrong
    return str(value)

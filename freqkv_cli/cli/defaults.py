"""The config file's values as the commands' defaults (click's ``default_map``).

Click takes a value from the command line first, then from the option's environment variable,
then from the default map, then the option's own default: exactly flag > environment > config >
built-in. Each command gets only the keys that mean the same thing to it (eval's --cache is a
list of policies to compare, so a configured cache is not its default).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config

# command (or group, then command) -> the config keys it takes
_ALL = ("model", "window", "cache", "device", "dtype", "ctx")
_MODEL_ONLY = ("model", "device", "dtype")
COMMAND_KEYS: dict[str, Any] = {
    **dict.fromkeys(("summarize", "qa", "read", "chat", "info"), _ALL),
    "count": ("model",),
    **dict.fromkeys(("spectrum", "calibrate", "finetune"), _MODEL_ONLY),
    "eval": {"ppl": (*_MODEL_ONLY, "window"), "needle": (*_MODEL_ONLY, "window")},
}


def default_map(config: Config, argv: Sequence[str] = ()) -> dict[str, Any]:
    """The default map click is given for ``config`` (empty without a config file). With a
    saved memory among the arguments ``argv``, no window: the memory keeps the settings it was
    read with (and refuses a --window)."""
    if not config.values:
        return {}
    memory = _names_a_memory(argv)

    def build(keys: Any) -> dict[str, Any]:
        if isinstance(keys, dict):
            return {name: build(inner) for name, inner in keys.items()}
        chosen = {key: config.values[key] for key in keys if key in config.values}
        if memory:
            chosen.pop("window", None)
        return chosen

    return build(COMMAND_KEYS)


# Options whose value is a file written, not read: a memory there is not one being asked.
_WRITTEN = ("-o", "--out", "--save")


def _names_a_memory(argv: Sequence[str]) -> bool:
    from ..memory.file_format import is_memory_file

    previous = ""
    for argument in argv:
        named = previous not in _WRITTEN and not argument.startswith("-") and Path(argument).is_file()
        if named and is_memory_file(argument):
            return True
        previous = argument
    return False

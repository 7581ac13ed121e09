"""The config file's values as the commands' defaults (click's ``default_map``).

Click takes a value from the command line first, then from the option's environment variable,
then from the default map, then the option's own default: exactly flag > environment > config >
built-in. Each command gets only the keys that mean the same thing to it (eval's --cache is a
list of policies to compare, so a configured cache is not its default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

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


def default_map(config: Config) -> dict[str, Any]:
    """The default map click is given for ``config`` (empty without a config file)."""
    if not config.values:
        return {}

    def build(keys: Any) -> dict[str, Any]:
        if isinstance(keys, dict):
            return {name: build(inner) for name, inner in keys.items()}
        chosen: dict[str, Any] = {key: config.values[key] for key in keys if key in config.values}
        if "window" in chosen:
            chosen["window"] = _unless_memory(chosen["window"])
        return chosen

    return build(COMMAND_KEYS)


def _unless_memory(window: str) -> Callable[[], str | None]:
    """The configured window, except for a command given a saved memory first: the memory keeps
    the settings it was read with (and refuses a --window)."""

    def value() -> str | None:
        from ..memory.file_format import is_memory_file

        context = click.get_current_context(silent=True)
        params = context.params if context is not None else {}
        first = params.get("path") or (params.get("paths") or [None])[0]
        if isinstance(first, str) and first != "-" and is_memory_file(first):
            return None
        return window

    return value

"""One option: the help panel it shows in, and the default a checkpoint's freqkv.json may set."""

from __future__ import annotations

import functools
from typing import Any

import typer

MODEL_PANEL = "Model and cache"
OUTPUT_PANEL = "Output"
INPUT_PANEL = "Input"


def option(*flags: str, panel: str = MODEL_PANEL, **settings: Any) -> Any:
    """A typer option in one of the help panels."""
    return typer.Option(*flags, rich_help_panel=panel, **settings)


@functools.cache
def _shipped(name: str) -> object | None:
    """What the default model's tuned freqkv.json sets ``name`` to, for the help (a small file)."""
    import json

    from ...models.default import SHIPPED_ADAPTER

    try:
        return json.loads((SHIPPED_ADAPTER / "freqkv.json").read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def from_the_model(name: str) -> str:
    """The default text of a cache setting a checkpoint's freqkv.json may set."""
    value = _shipped(name)
    return "from the model" if value is None else f"from the model: {value}"

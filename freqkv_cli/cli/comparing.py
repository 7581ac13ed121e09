"""What `freqkv eval ppl` and `freqkv eval needle` share: the lists they compare, and the settings
every result and figure is labelled with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

from ..cache.policy import CachePolicy, CacheSettings
from ..evaluation import choices
from ..models.loading import LoadedModel
from . import options as o
from .output import model_json

LengthsOpt = Annotated[
    str,
    o.option(
        "--lengths", "-l", panel=None, help="Context lengths in tokens, comma-separated, e.g. 4k,8k,16k."
    ),
]
CachesOpt = Annotated[
    str, o.option("--cache", help="Policies to compare, comma-separated: full,sink,freqkv.")
]


def compared(kinds: str, shared: o.CacheChoice) -> list[CacheSettings]:
    """One set of settings per policy named in ``kinds``, each with the other cache flags."""
    picked = [replace(shared.settings, kind=kind) for kind in choices.parse_policies(kinds)]
    for settings in picked:
        settings.check()
    return picked


def settings_json(loaded: LoadedModel, policies: list[CachePolicy]) -> dict[str, Any]:
    """The model and cache settings every JSON output starts with."""
    windowed = next((p for p in policies if p.kind != "full"), None)
    return {
        **model_json(loaded),
        "native_window": loaded.native_window or None,
        "window": windowed.window if windowed else None,
        "sink": policies[0].sink,
        "recent": policies[0].recent,
        "ratio": policies[0].ratio,
    }


def plot_title(loaded: LoadedModel, policies: list[CachePolicy]) -> str:
    settings = settings_json(loaded, policies)
    return (
        f"{settings['model']} · window {settings['window']} · sink {settings['sink']} · "
        f"recent {settings['recent']} · ratio {settings['ratio']}"
    )


def encoder(loaded: LoadedModel, special: bool) -> Callable[[str], list[int]]:
    tokenizer = loaded.tokenizer

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])  # type: ignore[operator]

    return encode

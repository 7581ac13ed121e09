"""What the `freqkv eval` commands share: the lengths and policies they compare, checked before a
model loads, the settings every result and figure is labelled with, and the haystack needles hide in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from ..cache.policy import CachePolicy, CacheSettings
from ..documents import open_document
from ..errors import InputError
from ..evaluation import choices, plots
from ..evaluation.needle import HAYSTACK_NAME, default_haystack
from ..models.loading import LoadedModel
from . import options as o
from .output import model_json, write_json

LengthsOpt = Annotated[
    str,
    o.option(
        "--lengths", "-l", panel=None, help="Context lengths in tokens, comma-separated, e.g. 4k,8k,16k."
    ),
]
CachesOpt = Annotated[
    str, o.option("--cache", metavar="POLICIES", help="Policies to compare, comma-separated.")
]


def seeds_option(help: str) -> Any:
    """--seeds: how many samples each cell of the comparison takes."""
    return o.option("--seeds", min=1, panel=None, help=help)


def haystack_option(help: str) -> Any:
    """--haystack: a text of the user's in place of the shipped Botchan excerpt."""
    return o.option(
        "--haystack",
        panel=o.INPUT_PANEL,
        metavar="PATH",
        show_default="an excerpt of Botchan, public domain, shipped",
        help=help,
    )


def read_haystack(path: str | None) -> tuple[str, str]:
    """The haystack's name and text: the document at ``path`` (--haystack), else the shipped one."""
    if path is not None:
        source, text = path, open_document(path).text()
    else:
        source, text = f"{HAYSTACK_NAME} (Botchan, chapters I-III)", default_haystack()
    if not text.strip():
        raise InputError(f"{source}: the haystack has no text")
    return source, text


@dataclass
class Comparison:
    """One eval run: the lengths, the policies side by side (each --cache kind with the other
    cache flags), the figure to draw; then the model they run on (:meth:`on`)."""

    lengths: list[int]
    settings: list[CacheSettings]
    plot: str | None
    started: float = field(default_factory=time.perf_counter)
    loaded: LoadedModel | None = None
    policies: list[CachePolicy] = field(default_factory=list)

    @classmethod
    def of(cls, lengths: str, kinds: str, shared: o.CacheChoice, plot: str | None) -> Comparison:
        """Parse and check everything the flags say, before any model is loaded."""
        wanted = choices.parse_lengths(lengths)
        picked = [replace(shared.settings, kind=kind) for kind in choices.parse_policies(kinds)]
        for settings in picked:
            settings.check()
        if plot:
            plots.require_matplotlib()
        return cls(wanted, picked, plot)

    def on(self, loaded: LoadedModel) -> list[CachePolicy]:
        """The policies on this model (its checkpoint's settings where the flags say nothing)."""
        self.loaded = loaded
        self.policies = [loaded.cache_policy(settings) for settings in self.settings]
        return self.policies

    def settings_json(self) -> dict[str, Any]:
        """The model and cache settings every JSON output starts with."""
        assert self.loaded is not None
        windowed = next((p for p in self.policies if p.kind != "full"), None)
        first = self.policies[0]
        return {
            **model_json(self.loaded),
            "native_window": self.loaded.native_window or None,
            "window": windowed.window if windowed else None,
            "sink": first.sink,
            "recent": first.recent,
            "ratio": first.ratio,
        }

    def title(self) -> str:
        """A figure's title."""
        settings = self.settings_json()
        return (
            f"{settings['model']} · window {settings['window']} · sink {settings['sink']} · "
            f"recent {settings['recent']} · ratio {settings['ratio']}"
        )

    def draw(self, plot: Callable[..., Any], results: Any) -> None:
        """Draw ``results`` with ``plot`` (one of :mod:`freqkv_cli.evaluation.plots`) if --plot asks."""
        if self.plot:
            plot(results, self.plot, title=self.title())

    def write_json(self, **results: Any) -> None:
        """The settings, what was compared, ``results``, the figure and the time, as one object."""
        write_json(
            {
                **self.settings_json(),
                "caches": [p.kind for p in self.policies],
                "lengths": self.lengths,
                **results,
                "plot": self.plot,
                "seconds": round(time.perf_counter() - self.started, 3),
            }
        )


def encoder(loaded: LoadedModel, special: bool) -> Callable[[str], list[int]]:
    tokenizer = loaded.tokenizer

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])  # type: ignore[operator]

    return encode

"""freqkv: read, summarize, question and chat with documents far longer than a model's window.

The Python API (:mod:`freqkv_cli.api`) is imported on first use, so ``import freqkv_cli`` stays
cheap (no torch): ``freqkv_cli.summarize(path)``, ``freqkv_cli.ask(path, question)``,
``freqkv_cli.load(...)`` for a model loaded once, ``Chat``, and the ``stream_*`` iterators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Answering",
    "Chat",
    "Model",
    "Reply",
    "__version__",
    "ask",
    "load",
    "stream_ask",
    "stream_summarize",
    "summarize",
]

if TYPE_CHECKING:
    from .api import Answering, Chat, Model, Reply, ask, load, stream_ask, stream_summarize, summarize


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'freqkv_cli' has no attribute {name!r}")

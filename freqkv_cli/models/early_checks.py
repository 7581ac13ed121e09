"""Cheap checks before anything slow: the model's files and what cache flags it allows, read
without loading or converting any weights (what `freqkv` checks before a minute of work)."""

from __future__ import annotations

import json
from pathlib import Path

from ..cache.policy import CHECKPOINT_KEYS, CacheSettings
from ..errors import ModelError
from . import loading  # through the module: tests stand in for the default's files there
from .integrity import check_gguf, check_safetensors
from .settings import TunedSettings, read_settings


def model_limits(
    spec: str, *, base: str | None = None, untuned: bool = False
) -> tuple[TunedSettings | None, int] | None:
    """What cache flags are checked against, read without loading (or converting) any weights:
    the settings the checkpoint was tuned with (its freqkv.json) and the model's native window
    (config.json's max_position_embeddings; a GGUF's context length). None when it cannot be
    told cheaply: the load then reports whatever is wrong."""
    try:
        if spec == "default":
            adapter = loading.shipped_adapter_path()
            settings = None if untuned or adapter is None else read_settings(adapter)
            return settings, _default_native_window()
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            return read_settings(path.parent), check_gguf(path).context_length or 0
        if (path / "adapter_config.json").is_file():
            settings = read_settings(path)
            config = json.loads((path / "adapter_config.json").read_text())
            base_spec = base or config.get("base_model_name_or_path") or (settings and settings.base_model)
            if not base_spec:
                return None
            limits = model_limits(str(base_spec), untuned=True)
            return None if limits is None else (settings, limits[1])
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
            return read_settings(path), int(config.get("max_position_embeddings") or 0)
    except (ModelError, OSError, ValueError, TypeError, AttributeError):
        return None
    return None


def _default_native_window() -> int:
    converted = loading.default_folder() / "config.json"
    if converted.is_file():
        return int(json.loads(converted.read_text()).get("max_position_embeddings") or 0)
    return check_gguf(loading.default_gguf_path()).context_length or 0


def check_cache_settings(
    spec: str, settings: CacheSettings, *, base: str | None = None, untuned: bool = False
) -> list[str]:
    """Resolve ``settings`` as the load would (:meth:`LoadedModel.cache_policy`) against what
    :func:`model_limits` reads, so that a window that cannot hold the sink and recent tokens is
    refused before minutes of loading or converting. Raises UsageError; returns warnings (a
    window above the model's native one). Nothing is checked when the limits cannot be read."""
    settings.check()
    limits = model_limits(spec, base=base, untuned=untuned)
    if limits is None:
        return []
    tuned, native = limits
    checkpoint = None if tuned is None else {key: getattr(tuned, key) for key in CHECKPOINT_KEYS}
    policy = settings.resolve(checkpoint, native)
    if native and policy.kind != "full" and settings.window is not None and policy.window > native:
        return [
            f"`window` {policy.window} is above the model's native window of {native} positions: "
            "the positions past it were never trained on, answers may suffer"
        ]
    return []


def check_model_files(spec: str) -> None:
    """The header checks of a model that :func:`load_model` would make, alone: at once, before
    the slow steps (a GGUF cut short or with only its magic bytes; cut-short safetensors)."""
    path = Path(spec).expanduser()
    if spec == "default" or not path.exists():
        return
    if path.is_file() and path.suffix.lower() == ".gguf":
        check_gguf(path)
    elif path.is_dir() and (path / "config.json").is_file():
        for weights in sorted(path.glob("*.safetensors")):
            check_safetensors(weights)

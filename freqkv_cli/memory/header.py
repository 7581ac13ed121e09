"""What a memory file says about itself (stored as JSON in the safetensors metadata)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import InputError

FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class MemoryHeader:
    """What a memory file says about itself; stored as JSON in the safetensors metadata.

    Every value must survive JSON: tuples come back as lists, dict keys as strings.

    - ``format_version``: the layout of the file; a reader refuses versions newer than its own.
    - ``model_fingerprint`` / ``adapter_fingerprint`` / ``tokenizer_fingerprint``: who made it;
      loading with another model or tokenizer is refused (the cache would be meaningless).
    - ``policy``: the cache policy's fields (window, ratio, ...), as the engine resolved them.
    - ``tokens_read``: how many tokens the model read into this memory.
    - ``documents``: one dict per document read: ``name``, ``pages``, ``sha256``, ``tokens``.
    - ``dtype``: the dtype the cache was held in (e.g. ``"bfloat16"``).
    - ``created``: ISO 8601 time of writing (UTC).
    - ``extra``: free-form state the engine needs to resume (counters, positions, ...).
    - ``checksum``: ``"sha256:<hex>"`` over the header (without this field) and every tensor's
      name, dtype, shape and bytes; set by `save_memory`, checked by `load_memory`.
    """

    format_version: int = FORMAT_VERSION
    model_fingerprint: str
    adapter_fingerprint: str | None = None
    tokenizer_fingerprint: str
    policy: dict[str, Any] = field(default_factory=dict)
    tokens_read: int = 0
    documents: list[dict[str, Any]] = field(default_factory=list)
    dtype: str = "float32"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "header") -> MemoryHeader:
        """Build from parsed JSON, checking each field's type; raises InputError naming `where`."""
        expected: dict[str, tuple[type, ...]] = {
            "format_version": (int,),
            "model_fingerprint": (str,),
            "adapter_fingerprint": (str, type(None)),
            "tokenizer_fingerprint": (str,),
            "policy": (dict,),
            "tokens_read": (int,),
            "documents": (list,),
            "dtype": (str,),
            "created": (str,),
            "extra": (dict,),
            "checksum": (str,),
        }
        missing = [name for name in expected if name not in data]
        if missing:
            raise InputError(f"{where} has an incomplete memory header (no {', '.join(missing)})")
        for name, types in expected.items():
            value = data[name]
            if not isinstance(value, types) or (isinstance(value, bool) and int in types):
                raise InputError(f"{where} has a damaged memory header ({name} is {type(value).__name__})")
        if not all(isinstance(doc, dict) for doc in data["documents"]):
            raise InputError(f"{where} has a damaged memory header (documents are not objects)")
        return cls(**{name: data[name] for name in expected})

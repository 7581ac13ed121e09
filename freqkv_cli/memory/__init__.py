"""A read document kept as a file: the memory file format and question-time passage ranking."""

from __future__ import annotations

from .file_format import (
    FORMAT_VERSION,
    SUFFIX,
    UNCHECKED,
    MemoryHeader,
    is_memory_file,
    load_memory,
    pack_ids,
    read_header,
    save_memory,
    unpack_ids,
)
from .passages import Passage, PassageIndex, rank_passages

__all__ = [
    "FORMAT_VERSION",
    "SUFFIX",
    "UNCHECKED",
    "MemoryHeader",
    "Passage",
    "PassageIndex",
    "is_memory_file",
    "load_memory",
    "pack_ids",
    "rank_passages",
    "read_header",
    "save_memory",
    "unpack_ids",
]

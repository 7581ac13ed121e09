"""The memory file (".fkv"): what the model holds after reading, kept on disk and loaded later.

Layout: a plain safetensors file (no pickle). The tensors are whatever the engine needs to resume
(the cache's keys and values, the document's token ids, ...). The safetensors metadata holds one
key, ``"freqkv_memory"``, whose value is the JSON of a `MemoryHeader`: the format version, who
made the file (model, adapter and tokenizer fingerprints), the cache policy, the documents read,
and a checksum over the header and every tensor's bytes.

Loading refuses, in one line, a file that is not a memory, is truncated or altered, was written by
a newer format, or was made by another model or tokenizer; it never writes or deletes anything.
Writing is atomic: a temporary file beside the target, flushed to disk, then renamed over it, so a
crash leaves the old file or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _serialize

from ..errors import InputError, ModelError, UsageError
from .header import FORMAT_VERSION, MemoryHeader
from .token_ids import pack_ids, unpack_ids

__all__ = [
    "FORMAT_VERSION",
    "MemoryHeader",
    "load_memory",
    "pack_ids",
    "read_header",
    "save_memory",
    "unpack_ids",
]

METADATA_KEY = "freqkv_memory"
SUFFIX = ".fkv"

# A safetensors header is JSON describing the tensors; ours has a few dozen entries. Anything past
# this is not a memory file (a text file's first 8 bytes read as a huge length).
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct("<Q")


def _canonical(header: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in header.items() if key != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's bytes as a flat uint8 array (any dtype, bfloat16 included); `tensor` on CPU."""
    if tensor.numel() == 0:
        return np.empty(0, dtype=np.uint8)  # (an empty tensor may have stride 0: no view then)
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def compute_checksum(header: MemoryHeader | Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` of the header JSON (sorted keys, without ``checksum``), then, in sorted name
    order, each tensor's name, dtype, shape and raw bytes. Tensors must be on the CPU."""
    data = header.to_dict() if isinstance(header, MemoryHeader) else dict(header)
    hasher = hashlib.sha256(_canonical(data))
    for name in sorted(tensors):
        tensor = tensors[name]
        description = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
        hasher.update(len(description).to_bytes(8, "little"))
        hasher.update(description.encode("utf-8"))
        hasher.update(tensor.nbytes.to_bytes(8, "little"))
        hasher.update(_raw_bytes(tensor))
    return "sha256:" + hasher.hexdigest()


# --- writing ---------------------------------------------------------------------------------


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing storage (safetensors refuses shared ones)."""
    prepared: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"memory tensor names must be non-empty strings other than __metadata__: {name!r}"
            )
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"memory tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.is_sparse or tensor.layout != torch.strided:
            raise TypeError(f"memory tensor {name!r} is not a dense tensor")
        cpu = tensor.detach().to("cpu").contiguous()
        storage = cpu.untyped_storage()
        if storage.nbytes() != cpu.nbytes or storage.data_ptr() in storages:
            cpu = cpu.clone()
            storage = cpu.untyped_storage()
        if cpu.nbytes:
            storages.add(storage.data_ptr())
        prepared[name] = cpu
    return prepared


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)


def save_memory(
    path: str | os.PathLike[str], header: MemoryHeader, tensors: Mapping[str, torch.Tensor]
) -> MemoryHeader:
    """Write `tensors` and `header` to `path` atomically; return the header as written (checksum set).

    Tensors of any dtype and device are copied to the CPU, contiguous; their names are the keys
    `load_memory` returns. The header's ``checksum`` is computed here (any value passed is ignored).
    The file is built in memory (as large as the file), written to a temporary file beside `path`,
    flushed to disk and renamed over `path`: an error leaves the old file (or none) and no temporary
    file; a crash leaves the old file (or none) and at worst a hidden ``.NAME.*.tmp`` beside it.
    An OS error (folder missing, disk full, no permission) raises UsageError naming the path; other
    errors propagate unchanged.
    """
    target = Path(path)
    cpu = _prepare(tensors)
    header = dataclasses.replace(header, checksum="")
    header = dataclasses.replace(header, checksum=compute_checksum(header, cpu))
    metadata = {METADATA_KEY: json.dumps(header.to_dict(), ensure_ascii=False, sort_keys=True)}
    if target.is_dir():
        raise UsageError(f"cannot write the memory to '{target}': it is a folder")
    data = _serialize(cpu, metadata=metadata)
    folder = target.parent
    temporary = folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        # A new file's mode is 0o666 less the umask, as for any file the user writes.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write the memory to '{target}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            _write(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write the memory to '{target}': {exc.strerror or exc}") from None
        raise
    _fsync_folder(folder)
    return header


# --- reading ---------------------------------------------------------------------------------


def _parse_prefix(prefix: bytes, size: int, where: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Check a file's first bytes as a safetensors header holding a memory header.

    `prefix` holds at least the first 8 bytes and, when the file has them, the whole safetensors
    header; `size` is the file's length. Returns (data offset, safetensors header, memory header
    dict). Raises InputError for anything that is not a complete, current memory header.
    """
    if size == 0:
        raise InputError(f"{where} is empty: not a FreqKV memory file")
    if size < _LENGTH.size:
        raise InputError(f"{where} is not a FreqKV memory file (only {size} bytes: truncated?)")
    (length,) = _LENGTH.unpack_from(prefix)
    if length < 2 or length > _MAX_HEADER_BYTES:
        raise InputError(f"{where} is not a FreqKV memory file (not a safetensors file)")
    offset = _LENGTH.size + length
    if size < offset:
        if prefix[_LENGTH.size : _LENGTH.size + 1] == b"{":
            raise InputError(f"{where} is truncated ({size} bytes, its header alone needs {offset})")
        raise InputError(f"{where} is not a FreqKV memory file (not a safetensors file)")
    try:
        table = json.loads(prefix[_LENGTH.size : offset].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(
            f"{where} is not a FreqKV memory file (its safetensors header is not JSON)"
        ) from None
    if not isinstance(table, dict):
        raise InputError(f"{where} is not a FreqKV memory file (not a safetensors file)")
    metadata = table.get("__metadata__")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise InputError(
            f"{where} is a safetensors file but not a FreqKV memory (no '{METADATA_KEY}' header)"
        )
    try:
        memory = json.loads(metadata[METADATA_KEY])
    except (TypeError, ValueError):
        raise InputError(f"{where} is altered or damaged: its memory header is not JSON") from None
    if not isinstance(memory, dict):
        raise InputError(f"{where} is altered or damaged: its memory header is not an object")
    version = memory.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{where} is altered or damaged: format version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{where} was written by a newer freqkv (memory format {version}; this one reads "
            f"{FORMAT_VERSION}): upgrade freqkv to load it"
        )
    end = 0
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
        ):
            raise InputError(f"{where} is altered or damaged: tensor {name!r} has no valid offsets")
        end = max(end, offsets[1])
    if size < offset + end:
        raise InputError(f"{where} is truncated ({size} of {offset + end} bytes)")
    if size > offset + end:
        raise InputError(f"{where} is altered or damaged: {size - offset - end} bytes after its data")
    return offset, table, memory


def _open_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"'{path}': no such memory file")
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return InputError(f"'{path}' is a folder, not a memory file")
    return InputError(f"cannot read '{path}': {exc.strerror or exc}")


def _read_prefix(path: Path) -> tuple[bytes, int]:
    """The first 8 bytes and, where the file has them, the whole safetensors header."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(_LENGTH.size)
            if len(prefix) == _LENGTH.size:
                (length,) = _LENGTH.unpack(prefix)
                if length <= _MAX_HEADER_BYTES:
                    prefix += handle.read(length)
    except OSError as exc:
        raise _open_error(path, exc) from None
    return prefix, size


def read_header(path: str | os.PathLike[str]) -> MemoryHeader:
    """The header of a memory file, reading only the safetensors header (cheap, for `info`).

    Checks the structure, the format version and the file's length, not the checksum (that needs
    every byte: `load_memory` does it). Raises InputError for a file that is not a memory.
    """
    where = f"'{Path(path)}'"
    prefix, size = _read_prefix(Path(path))
    _offset, _table, memory = _parse_prefix(prefix, size, where)
    return MemoryHeader.from_dict(memory, where=where)


def is_memory_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` looks like a memory file: a safetensors header with a "freqkv_memory" key.

    Reads only the header; never raises (a missing, unreadable or other file gives False). A file
    that passes may still be refused by `load_memory` (truncated, altered, newer, other model).
    """
    try:
        prefix, size = _read_prefix(Path(path))
        if size < _LENGTH.size or len(prefix) < _LENGTH.size:
            return False
        (length,) = _LENGTH.unpack_from(prefix)
        if not 2 <= length <= _MAX_HEADER_BYTES or len(prefix) < _LENGTH.size + length:
            return False
        table = json.loads(prefix[_LENGTH.size :].decode("utf-8"))
        metadata = table.get("__metadata__") if isinstance(table, dict) else None
        return isinstance(metadata, dict) and METADATA_KEY in metadata
    except (InputError, OSError, ValueError):
        return False


class _Unchecked(Enum):
    UNCHECKED = "unchecked"


UNCHECKED = _Unchecked.UNCHECKED
"""`load_memory(expect_adapter=UNCHECKED)`: accept any adapter fingerprint (the default)."""


def load_memory(
    path: str | os.PathLike[str],
    *,
    expect_model: str | None,
    expect_tokenizer: str | None,
    expect_adapter: str | _Unchecked | None = UNCHECKED,
    device: torch.device | str = "cpu",
) -> tuple[MemoryHeader, dict[str, torch.Tensor]]:
    """Read, check and load a memory file; returns its header and tensors (on `device`).

    Checked in this order, each refusal one line naming the path: the file exists and is a memory
    (InputError), its format is not newer than `FORMAT_VERSION` (InputError), it was made by
    `expect_model` / `expect_tokenizer` / `expect_adapter` (ModelError; None skips the model or
    tokenizer check, `UNCHECKED` skips the adapter check, and an `expect_adapter` of None requires
    a file made without adapter), it is complete and unaltered: every tensor parses and the
    checksum matches (InputError). Nothing is written or deleted.
    """
    target = Path(path)
    where = f"'{target}'"
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise _open_error(target, exc) from None
    _offset, _table, memory = _parse_prefix(data, len(data), where)
    header = MemoryHeader.from_dict(memory, where=where)
    for what, expected, found in (
        ("model", expect_model, header.model_fingerprint),
        ("tokenizer", expect_tokenizer, header.tokenizer_fingerprint),
    ):
        if expected is not None and expected != found:
            raise ModelError(
                f"{where} was made by another {what} ({found}), not the one loaded now ({expected}): "
                f"load it with the {what} that made it, or read the document again"
            )
    if expect_adapter is not UNCHECKED and expect_adapter != header.adapter_fingerprint:
        found_adapter = header.adapter_fingerprint or "no adapter"
        raise ModelError(
            f"{where} was made with another adapter ({found_adapter}), not the one loaded now "
            f"({expect_adapter or 'no adapter'}): load it with the adapter that made it, or read the "
            "document again"
        )
    try:
        tensors = _load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"{where} is altered or damaged: {reason}") from None
    del data
    if compute_checksum(memory, tensors) != header.checksum:
        raise InputError(f"{where} is altered or damaged: its checksum does not match its contents")
    if torch.device(device).type != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return header, tensors


# --- token ids -------------------------------------------------------------------------------
